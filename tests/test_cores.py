"""A stream's helper threads (video decoder, camera reader, background detection) keep off one core, which the frame
loop then has to itself; the frame loop itself is never pinned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_runtime import cores
from fer_runtime.cores import OPT_OUT, helper_cores, made_off_frame_core
from tests.conftest import numbered_video

pinnable = pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                              reason="needs Linux thread affinity and two cores")


@pytest.fixture(autouse=True)
def helpers_kept_off(monkeypatch):
    monkeypatch.delenv(OPT_OUT, raising=False)


def test_helpers_get_every_core_but_the_first_and_nothing_changes_with_one(monkeypatch):
    for allowed, expected in [({0, 1}, {1}), ({2, 5, 7}, {5, 7}), ({3}, None)]:
        monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid, allowed=allowed: allowed, raising=False)
        assert helper_cores() == expected
    monkeypatch.setattr(cores.sys, "platform", "darwin")  # macOS, Windows: no thread affinity
    assert helper_cores() is None
    assert made_off_frame_core(lambda: "opened") == "opened"


@pinnable
def test_an_error_in_opening_off_the_frame_core_is_raised_to_the_caller():
    with pytest.raises(ZeroDivisionError):
        made_off_frame_core(lambda: 1 / 0)
    assert made_off_frame_core(lambda: os.sched_getaffinity(0)) == helper_cores()


def _threads() -> dict[str, tuple[str, set[int]]]:
    """This process's threads: id -> (name, cores), those that end while being read left out."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            found[tid] = (Path(f"/proc/self/task/{tid}/comm").read_text().strip(), os.sched_getaffinity(int(tid)))
        except (OSError, ProcessLookupError):
            continue
    return found


class AffinityNotingCapture:
    """A capture that notes the cores of the thread that opened it and of each thread that read it."""

    def __init__(self, frames: int = 3) -> None:
        self.opened_on, self.read_on, self.frames = os.sched_getaffinity(0), set(), frames

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        self.read_on |= {frozenset(os.sched_getaffinity(0))}
        self.frames -= 1
        return (True, np.zeros((8, 8, 3), np.uint8)) if self.frames >= 0 else (False, None)

    def release(self) -> None:
        pass


@pinnable
def test_a_streams_helper_threads_keep_off_the_frame_loops_core(tmp_path, tiny_model_factory):
    from fer_runtime.detect import Detection
    from fer_runtime.engine import FaceEngine
    from fer_runtime.sources import LiveSource, VideoSource
    from tests.conftest import CLASSES

    frame_loop = os.sched_getaffinity(0)
    helpers = helper_cores()

    source = VideoSource(numbered_video(tmp_path / "v.mp4"))
    frames = iter(source)
    next(frames)
    assert os.sched_getaffinity(source._ahead.thread.native_id) == helpers
    source.close()

    captures = []
    live = LiveSource("rtsp://camera", capture_factory=lambda target: captures.append(AffinityNotingCapture())
                      or captures[-1], reconnect=0.0)
    list(live)
    live.close()
    assert captures[0].opened_on == helpers and captures[0].read_on == {frozenset(helpers)}

    seen = []
    engine = FaceEngine(tiny_model_factory(CLASSES), detect_every=2).detect_in_background()
    engine.detector = engine._background.detector = lambda image: seen.append(os.sched_getaffinity(0)) or [
        Detection((10.0, 10.0, 40.0, 40.0), 1.0)]
    try:
        for _ in range(6):
            engine.process_frame(np.full((120, 160, 3), 90, np.uint8))
        engine._background.take(wait=True)
    finally:
        engine.close()
    assert seen[0] == frame_loop  # the first frame's detection, on the frame loop, which waits for it
    assert seen[1:] and all(cores_seen == helpers for cores_seen in seen[1:])
    assert os.sched_getaffinity(0) == frame_loop  # the frame loop is never pinned


@pinnable
def test_opencv_still_counts_every_core_when_a_helper_thread_is_the_first_to_ask(tmp_path):
    def count(code: str) -> str:
        out = subprocess.run([sys.executable, "-c", code + "import cv2\nprint(cv2.getNumberOfCPUs())"], text=True,
                             capture_output=True, timeout=60, cwd=Path(__file__).parents[1])
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[-1]

    video = numbered_video(tmp_path / "v.mp4")
    first_in_a_helper = (f"from fer_runtime.sources import VideoSource\nsource = VideoSource({video!r})\n"
                         "next(iter(source))\nsource.close()\n")
    assert count(first_in_a_helper) == count("")


@pinnable
def test_the_threads_ffmpeg_starts_as_a_video_opens_keep_off_the_frame_loops_core(tmp_path, monkeypatch):
    from fer_runtime import sources
    from fer_runtime.sources import VideoSource

    monkeypatch.setattr(sources, "decoding_threads", lambda: 2)  # threads to pin even where one helper core gets one

    path = str(tmp_path / "v.mkv")  # VP9: FFmpeg starts its frame threads when the decoder opens
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"VP90"), 30, (160, 120))
    if not writer.isOpened():
        pytest.skip("this OpenCV writes no VP9")
    for i in range(6):
        writer.write(np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8))
    writer.release()
    source = VideoSource(path)
    try:
        decoders = {tid: cores_ for tid, (name, cores_) in _threads().items() if name.startswith("av:")}  # av:CODEC:...
        if not decoders:
            pytest.skip("this FFmpeg starts no decoding threads (one core allowed?)")
        assert all(cores_seen == helper_cores() for cores_seen in decoders.values()), decoders
    finally:
        source.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="helper threads are pinned on Linux only")
def test_a_video_decodes_on_one_ffmpeg_thread_per_helper_core(tmp_path, monkeypatch):
    """FFmpeg starts a decoding thread per core of the machine; all of them share the helper cores, so it gets one per
    helper core (two on one core cost 15% more CPU a frame), and its own choice where helpers are not pinned."""
    from fer_runtime.sources import VideoSource, decoding_threads

    path = numbered_video(tmp_path / "v.mp4", 3)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cores.os, "sched_setaffinity", lambda pid, cpus: None, raising=False)
    assert decoding_threads() == 3
    source = VideoSource(str(path))
    try:
        assert source.cap.get(cv2.CAP_PROP_N_THREADS) == 3 and len(list(source)) == 3
    finally:
        source.close()
    monkeypatch.setenv("FER_HELPER_CORES", "all")
    assert decoding_threads() is None


def test_fer_helper_cores_all_leaves_every_thread_on_every_core(monkeypatch):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cores.os, "sched_setaffinity", lambda pid, cpus: None, raising=False)
    assert helper_cores() == {1}
    monkeypatch.setenv("FER_HELPER_CORES", "all")
    assert helper_cores() is None


@pinnable
def test_a_capture_that_opens_after_the_caller_gave_up_is_released():
    class Capture:
        released = False

        def release(self) -> None:
            self.released = True

    capture, go_on = Capture(), threading.Event()

    def make():  # the user presses Ctrl-C while the camera opens
        os.kill(os.getpid(), signal.SIGINT)
        go_on.wait(5.0)
        return capture

    with pytest.raises(KeyboardInterrupt):
        made_off_frame_core(make)
    go_on.set()
    deadline = time.monotonic() + 5.0
    while not capture.released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert capture.released


@pinnable
def test_a_thread_the_system_will_not_pin_runs_where_it_may(tmp_path, monkeypatch):
    from fer_runtime.sources import VideoSource

    def refuse(pid, cpus):
        raise PermissionError("not in this sandbox")

    monkeypatch.setattr(cores.os, "sched_setaffinity", refuse)
    source = VideoSource(numbered_video(tmp_path / "v.mp4"))
    assert len(list(source)) == 12
    source.close()


def _pinned_threads(since: set[str], cores_: set[int]) -> set[str]:
    return {tid for tid, (_, pinned) in _threads().items() if tid not in since and pinned == cores_}


@pinnable
def test_opencv_workers_the_detection_thread_made_do_not_outlive_the_stream(tiny_model_factory, monkeypatch):
    from fer_runtime import engine as engine_module
    from fer_runtime.engine import FaceEngine
    from tests.conftest import CLASSES

    before, big = set(os.listdir("/proc/self/task")), np.random.default_rng(0).integers(0, 255, (720, 1280), np.uint8)
    monkeypatch.setattr(engine_module, "opencv_threads_beside_a_stream", lambda: 2)  # a pool to make
    saved = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cv2.setNumThreads(2)  # as many as the stream keeps, and none made yet: the detection thread is the first to need one
    engine = FaceEngine(tiny_model_factory(CLASSES), detect_every=2).detect_in_background()

    def detect(image):
        if threading.current_thread() is not threading.main_thread():
            cv2.GaussianBlur(big, (31, 31), 0)
        return []

    engine.detector = engine._background.detector = detect
    try:
        for _ in range(4):
            engine.process_frame(np.full((120, 160, 3), 90, np.uint8))
            engine._background.take(wait=True)
        during = _pinned_threads(before, helper_cores())
    finally:
        engine.close()
        cv2.setNumThreads(saved)
    cv2.GaussianBlur(big, (31, 31), 0)  # the frame loop's next parallel work
    assert during and not (during & _pinned_threads(before, helper_cores()))
