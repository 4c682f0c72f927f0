"""Streams that come back (issue 48): a network stream that drops is reopened, followed to its end, and the summary
names the outage; OpenCV's and FFmpeg's own log lines never reach the user."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("skimage")

from tests.mjpeg_server import DroppingStream, run_fer_run  # noqa: E402

FER_RUN = [sys.executable, "-m", "fer_runtime.cli", "--no-display"]


def test_a_stream_that_drops_and_comes_back_is_followed_to_its_end(tmp_path):
    out = tmp_path / "faces.jsonl"
    # up 2 s (face on the left), 503 for 1.5 s, up 2 s (face on the right), then gone: reopened for 3 s, then lost
    result = run_fer_run(DroppingStream(up=2.0, outage=1.5), "--reconnect", "3", "--json", str(out))
    summary = result.stdout.strip().splitlines()[-2]
    assert "the source dropped once (" in summary and "and came back" in summary, result.stdout
    outage = float(summary.split("dropped once (")[1].split(" s")[0])
    assert 1.0 <= outage <= 3.0, summary
    assert "the source was lost after 3.0 s of reopening it" in summary
    assert result.returncode == 1  # the stream never came back the second time
    centres = [f["box"][0] + f["box"][2] / 2 for r in map(json.loads, out.read_text().splitlines()) for f in r["faces"]]
    assert centres and centres[0] < 320 < centres[-1]  # faces from before the outage and from after it
    # OpenCV's "[ WARN:0@...]" and FFmpeg's "[http @ 0x...]" lines stay out: fer-run says it once, in its own words
    assert not [line for line in result.stderr.splitlines() if line.startswith("[")], result.stderr


def test_a_stream_that_stalls_without_closing_is_given_up_as_reconnect_says(tmp_path):
    started = time.monotonic()
    result = run_fer_run(DroppingStream(up=2.5, outage=60.0, stall=True), "--reconnect", "2")
    assert result.returncode == 1 and "the source was lost after" in result.stdout, result.stdout + result.stderr
    assert time.monotonic() - started < 20  # OpenCV alone waits 30 s for a read


def test_a_stream_that_comes_back_at_another_size_keeps_its_outputs(tmp_path):
    out, video = tmp_path / "faces.jsonl", tmp_path / "run.mp4"
    server = DroppingStream(up=2.5, outage=1.0, size_after=(320, 240))
    result = run_fer_run(server, "--reconnect", "2", "--json", str(out), "--save", str(video))
    assert result.returncode == 1 and "dropped once" in result.stdout, result.stdout + result.stderr
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames == len(out.read_text().splitlines()) > 0 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 640


@pytest.mark.parametrize("stall", [False, True])  # closed, or open and silent (a read that has not given up yet)
def test_an_outage_the_run_ends_in_is_named(tmp_path, stall):
    server = DroppingStream(up=2.5, outage=60.0, stall=stall)
    run = subprocess.Popen([*FER_RUN, "--source", server.url, "--reconnect", "60"], stdout=subprocess.PIPE, text=True)
    time.sleep(7.0)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130 and "the source had been down for" in out and "(interrupted)" in out, out


def test_a_video_file_served_over_http_ends_instead_of_replaying(tmp_path):
    import cv2

    from tests.mjpeg_server import face_frames

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for jpeg in face_frames() * 15:
        writer.write(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    writer.release()

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(video.parent), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
    result = subprocess.run([*FER_RUN, "--source", url, "--json", str(tmp_path / "f.jsonl")], capture_output=True,
                            text=True, timeout=120)
    server.shutdown()
    assert result.returncode == 0 and "dropped" not in result.stdout, result.stdout + result.stderr
    assert 0 < len((tmp_path / "f.jsonl").read_text().splitlines()) <= 30  # the newest frame each time: some go


def test_a_full_disk_is_one_line_of_fer_run_s_and_no_opencv_log_line(tiny_model_factory, face_video_factory, tmp_path):
    from tests.test_faults import _tmpfs

    video = face_video_factory(frames=48, fps=24)
    with _tmpfs(tmp_path / "full", "256k") as full:
        result = subprocess.run([sys.executable, "-m", "fer_runtime.cli", "--source", str(video), "--no-display",
                                 "--model", str(tiny_model_factory()), "--save", str(full / "y.mp4")],
                                capture_output=True, text=True, timeout=300)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 2 and len([line for line in lines if line.startswith("fer-run: error: ")]) == 1, lines
    # OpenCV's "[ WARN:0@0.43] global cap_ffmpeg.cpp ... Failed to write frame" lines stay out
    assert not [line for line in lines if line.startswith("[")], lines
