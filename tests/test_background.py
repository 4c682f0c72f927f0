"""Background detection (issue 48): no frame of a stream waits for a full detection, and the faces it finds are
adopted on the frame where it finishes, followed there from the frame it ran on."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fer_runtime import engine as engine_module
from fer_runtime.detect import Detection
from fer_runtime.engine import FaceEngine
from tests.conftest import CLASSES, numbered_video


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory):
    return tiny_model_factory(CLASSES)


@pytest.fixture(scope="module")
def face():
    skimage_data = pytest.importorskip("skimage.data")
    return cv2.resize(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[30:230, 130:330], (100, 100))


def frame(face: np.ndarray, i: int, with_b: bool) -> tuple[np.ndarray, list[tuple]]:
    """Face A moving right 4 px a frame; face B, when there, moving left below it."""
    canvas = np.full((480, 640, 3), 90, np.uint8)
    boxes = [(40 + 4 * i, 60, 100, 100)] + ([(500 - 4 * i, 300, 100, 100)] if with_b else [])
    for x, y, w, h in boxes:
        canvas[y : y + h, x : x + w] = face
    noise = np.random.default_rng(i).normal(0, 4, canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8), boxes


class HeldDetector:
    """The true boxes of the frame it is given; a detection off the first frame waits until ``release`` (at most 5 s,
    noted in ``timed_out``): a frame loop that waited for it would stall here."""

    def __init__(self) -> None:
        self.release, self.calls, self.timed_out, self.truth = threading.Event(), [], False, {}

    @staticmethod
    def _key(image: np.ndarray) -> bytes:
        return image.tobytes()[:4096] + image.tobytes()[-4096:]

    def knows(self, image: np.ndarray, boxes: list[tuple]) -> None:
        """``boxes`` are the faces of ``image``."""
        self.truth[self._key(image)] = boxes

    def __call__(self, image: np.ndarray) -> list[Detection]:
        key = self._key(image)
        self.calls.append(threading.current_thread() is threading.main_thread())
        if len(self.calls) > 1 and not self.release.wait(timeout=5.0):
            self.timed_out = True
        return [Detection(tuple(float(v) for v in b), 1.0) for b in self.truth[key]]


def test_no_frame_waits_for_a_full_detection_and_a_new_face_is_adopted_where_it_finishes(tiny_model, face):
    engine = FaceEngine(tiny_model, detect_every=4).detect_in_background(period=0)
    detector = HeldDetector()
    engine.detector = engine._background.detector = detector
    seen = []
    try:
        for i in range(30):
            image, truth = frame(face, i, with_b=i >= 2)
            detector.knows(image, truth)
            if i == 20:  # the detection handed over on a frame with face B finishes now
                detector.release.set()
                for _ in range(500):  # at most 5 s for the thread to finish it
                    if engine._background._done is not None:
                        break
                    threading.Event().wait(0.01)
            seen.append(sorted(r.box[0] for r in engine.process_frame(image)))
    finally:
        detector.release.set()
        engine.close()
    assert not detector.timed_out, "a frame waited for the background detection"
    assert detector.calls[0] and not any(detector.calls[1:])  # the first frame on the frame loop, then the thread
    assert all(len(s) == 1 for s in seen[:20]), seen  # face A followed while the detection is held
    assert abs(seen[19][0] - (40 + 4 * 19)) < 6
    # B was found on frame 4 (the first due after frame 0) and is followed from there to where it is now, on frame 20
    assert len(seen[20]) == 2 and abs(seen[20][1] - (500 - 4 * 20)) < 6, seen[20]
    assert all(len(s) == 2 for s in seen[20:]), seen


@pytest.mark.parametrize("period, handed_on", [(0.0, []), (0.05, [3, 7, 11, 15, 19, 23])])
def test_background_detection_also_runs_detect_period_seconds_after_the_last(tiny_model, face, monkeypatch, period,
                                                                              handed_on):
    """Frames 20 ms apart by the engine's clock, as a camera gives them, each detection back before the next frame:
    with a 0.05 s period one is handed over on the third frame after the last came back (counted from the first
    frame's), although --detect-every's 1000 frames never pass; with 0 only the frame count (and a lost face) counts."""
    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    engine = FaceEngine(tiny_model, detect_every=1000).detect_in_background(period)
    detector = HeldDetector()
    detector.release.set()
    engine.detector = engine._background.detector = detector
    frames = [frame(face, i, with_b=False) for i in range(25)]
    handed = []
    try:
        for i, (image, truth) in enumerate(frames):
            clock[0] = 100.0 + 0.02 * i  # perf_counter counts from an arbitrary point
            detector.knows(image, truth)
            assert len(engine.process_frame(image)) == 1
            background = engine._background
            if i and background.busy and engine._submitted == i:
                handed.append(i)
                with background._cond:
                    assert background._cond.wait_for(lambda b=background: b._done is not None, timeout=5.0)
    finally:
        engine.close()
    assert handed == handed_on


def test_background_detection_is_for_streams_only_and_an_error_in_it_reaches_the_frame_loop(tiny_model, face):
    engine = FaceEngine(tiny_model).detect_in_background()

    def broken(image):
        raise RuntimeError("detector broke")

    first = engine.detector
    engine.detector, engine._background.detector = first, broken
    image, _ = frame(face, 0, with_b=False)
    engine.process_image(image)  # photos: on the call, never the thread
    assert engine._background._thread is None
    with pytest.raises(RuntimeError, match="detector broke"):
        for i in range(40):
            engine.process_frame(frame(face, i, with_b=False)[0])
            if engine._background._thread is not None:
                engine._background._thread.join(timeout=0.5)
    engine.close()


def test_small_faces_a_40_px_face_in_a_photo_and_a_48_px_face_in_video_within_one_detection_period(tiny_model):
    """benchmarks/scripts/small_faces.py's frames: the astronaut's face, its Haar box scaled to 40 or 48 px, in 640x480."""
    pytest.importorskip("skimage")
    from benchmarks.scripts.small_faces import face_box_crop, frame_with_face, video_found
    from fer_runtime.detect import DEFAULT_DETECT_WIDTH

    face = face_box_crop()
    assert len(FaceEngine(tiny_model).process_image(frame_with_face(face, 40))) == 1
    assert video_found(face, 48, DEFAULT_DETECT_WIDTH)


class ThreadNotingCapture:
    """A VideoCapture that notes which thread each read ran on, takes ``delay`` seconds a read, raises at frame
    ``fail_at``, and notes whether it was released in the middle of a read."""

    def __init__(self, cap, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.cap, self.fail_at, self.delay, self.threads = cap, fail_at, delay, []
        self.reading = self.released_mid_read = False

    def read(self):
        self.reading = True
        try:
            self.threads.append(threading.current_thread().name)
            if self.fail_at is not None and len(self.threads) > self.fail_at:
                raise RuntimeError("decoder broke")
            time.sleep(self.delay)
            return self.cap.read()
        finally:
            self.reading = False

    def release(self):
        self.released_mid_read = self.reading
        self.cap.release()

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_a_video_is_decoded_ahead_on_a_thread_of_its_own_every_frame_in_order(tmp_path, monkeypatch):
    from fer_runtime import sources
    from fer_runtime.sources import VideoSource

    path = numbered_video(tmp_path / "n.mp4")
    inline = [f.image for f in VideoSource(path, prefetch=0)]
    source = VideoSource(path)
    source.cap = capture = ThreadNotingCapture(source.cap)
    ahead = list(source)
    source.close()
    assert len(ahead) == len(inline) == 12 and [f.index for f in ahead] == list(range(12))
    assert all(np.array_equal(a.image, b) for a, b in zip(ahead, inline))
    assert set(capture.threads) == {"fer-decode"}

    # a run that stops early (--max-frames, Ctrl-C) ends the reader, which waits on a full queue; so does a loop
    # that stops taking frames without closing the source
    source = VideoSource(path, prefetch=2)
    frames = iter(source)
    next(frames)
    source.close()
    assert not source._ahead.thread.is_alive()
    source = VideoSource(path, prefetch=2)
    frames = iter(source)
    next(frames)
    frames.close()
    assert not source._ahead.thread.is_alive()
    source.close()

    # closed from another thread while the frame loop waits for a frame: the loop ends, and the capture is released
    # after the read in progress, not during it
    monkeypatch.setattr(sources, "JOIN_S", 0.05)  # closing gives up waiting for the decoder mid-read
    source = VideoSource(path)
    source.cap = capture = ThreadNotingCapture(source.cap, delay=0.3)
    done = threading.Event()
    threading.Thread(target=lambda: (list(source), done.set()), daemon=True).start()
    time.sleep(0.1)
    source.close()
    assert done.wait(2.0) and capture.threads and not capture.released_mid_read

    # an error in decoding ends the run in the frame loop, not silently in the thread
    source = VideoSource(path)
    source.cap = ThreadNotingCapture(source.cap, fail_at=5)
    with pytest.raises(RuntimeError, match="decoder broke"):
        list(source)
    source.close()


def test_opencv_keeps_its_thread_count_for_photos_and_gets_it_back_when_a_stream_ends(tiny_model, face, tmp_path,
                                                                                    monkeypatch):
    before = cv2.getNumThreads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    engine = FaceEngine(tiny_model).detect_in_background()
    assert cv2.getNumThreads() == 1  # two cores: the detection keeps to the one the frame loop and decoder leave
    engine.close()
    assert cv2.getNumThreads() == before
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert engine_module.opencv_threads_beside_a_stream() == 6

    seen = []
    real = FaceEngine.detect_in_background
    monkeypatch.setattr(FaceEngine, "detect_in_background", lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    from click.testing import CliRunner

    from fer_runtime.cli import main as run_main

    cv2.imwrite(str(tmp_path / "face.png"), face)
    r = CliRunner().invoke(run_main, ["--model", str(tiny_model), "--source", str(tmp_path / "face.png"), "--no-display"])
    assert r.exit_code == 0 and not seen, r.output  # a photo: detection on the call, OpenCV untouched
