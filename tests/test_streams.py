"""Streams that come back (issue 48): a network stream that drops is reopened, followed to its end, and the summary
names the outage; OpenCV's and FFmpeg's own log lines never reach the user."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("skimage")

from tests.mjpeg_server import DroppingStream, run_fer_run  # noqa: E402


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
