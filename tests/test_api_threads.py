"""The Python API shared across threads: concurrent ``analyze`` and ``classify_crops`` calls on one recognizer give
exactly the records of the same calls made alone (issue 50: before, 151 of 240 results from 4 threads were another
thread's face or a shifted box, and nothing raised)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from fer_runtime import FaceExpressionRecognizer
from fer_runtime.cli import DEMO_IMAGE
from fer_runtime.profiling import StageTimer
from tests.conftest import YUNET

THREADS, CALLS = 4, 24


def _photos() -> list[np.ndarray]:
    """Photos of one face at different places and sizes: a detector state left by another call shows as a wrong box."""
    photo = cv2.imread(str(DEMO_IMAGE))
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[100:420, 260:580] = photo
    gray_small = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), (240, 240))
    return [photo, np.ascontiguousarray(photo[:, ::-1]), canvas, gray_small]


def _calls(photos: list[np.ndarray]) -> list[tuple]:
    """(method, argument, keywords): every kind of call the API takes."""
    crops = [photos[0][40:200, 60:220], photos[2][150:300, 300:450], photos[3]]
    return [("analyze", p, {}) for p in photos] + [("analyze", crops[0], {"crops": True}),
                                                     ("classify_crops", crops, {}), ("classify_crops", crops[::-1], {})]


def _mismatches(fer: FaceExpressionRecognizer) -> list[str]:
    calls = _calls(_photos())
    alone = [getattr(fer, name)(arg, **kw) for name, arg, kw in calls]
    assert all(alone[:4]), "every photo has a face when analysed alone"
    wrong: list[str] = []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        start.wait()
        for i in range(CALLS):
            k = (t + i) % len(calls)
            name, arg, kw = calls[k]
            got = getattr(fer, name)(arg, **kw)
            if got != alone[k]:
                wrong.append(f"call {k} ({name}): {got} != {alone[k]}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wrong


def test_threads_sharing_one_recognizer_get_the_answers_of_calls_made_alone():
    wrong = _mismatches(FaceExpressionRecognizer())
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} calls differ, e.g. {wrong[0]}"


@pytest.mark.skipif(not YUNET.exists(), reason="needs ../shared/models/face_detection_yunet.onnx")
def test_threads_sharing_a_yunet_recognizer_too():
    """FaceDetectorYN keeps the input size it was set to: photos of other sizes from other threads must not move it."""
    wrong = _mismatches(FaceExpressionRecognizer(detector="yunet", detector_model=YUNET))
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} calls differ, e.g. {wrong[0]}"


def test_the_stage_timer_counts_every_stage_timed_from_many_threads():
    timer = StageTimer(size=50)

    def worker() -> None:
        for _ in range(2000):
            with timer("detect"):
                pass

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = timer.summary()["detect"]
    assert summary["n"] == THREADS * 2000 and len(timer.samples["detect"].values) == 50
