"""Full-frame detection on a thread of its own, one frame at a time, so that no frame of a stream waits for it.

The frame loop hands a frame over when the thread is idle (``submit``) and takes the faces found whenever they are
ready (``take``); in between it follows the faces it has. OpenCV and ONNX Runtime release the GIL while they work, so
the detection runs beside the frame loop, on a core other than the frame loop's where there are two (``cores.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_runtime.cores import keep_off_frame_core


@dataclass
class Finished:
    """A detection done: what was handed over with the frame (``tag``), the faces found, and how long it took."""

    tag: Any
    detections: list
    seconds: float


class BackgroundDetector:
    """Runs ``detector`` on frames handed over one at a time; at most one frame is in hand (``busy``)."""

    def __init__(self, detector: Callable[[np.ndarray], list]) -> None:
        self.detector = detector
        self.busy = False
        self._job: tuple[Any, np.ndarray] | None = None
        self._done: tuple[Any, list, float, BaseException | None] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, tag: Any, frame: np.ndarray) -> None:
        """Detect on ``frame`` (which the caller no longer changes); only while not ``busy``."""
        if self.busy:
            raise RuntimeError("a detection is already running")
        with self._cond:
            self._job, self.busy = (tag, frame), True
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="fer-detect", daemon=True)
            self._thread.start()

    def take(self, wait: bool = False) -> Finished | None:
        """The detection handed over last once it has finished (once), else None; ``wait`` blocks until it has.
        An error the detector raised is raised here, in the frame loop."""
        with self._cond:
            if wait and self.busy:
                self._cond.wait_for(lambda: self._done is not None)
            done, self._done = self._done, None
        if done is None:
            return None
        self.busy = False
        tag, detections, seconds, error = done
        if error is not None:
            raise error
        return Finished(tag, detections, seconds)

    def _work(self) -> None:
        keep_off_frame_core()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    return
                (tag, frame), self._job = self._job, None
            t0, detections, error = time.perf_counter(), [], None
            try:
                detections = self.detector(frame)
            except BaseException as exc:  # noqa: BLE001 - handed to the frame loop, which raises it
                error = exc
            with self._cond:
                self._done = (tag, detections, time.perf_counter() - t0, error)
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
