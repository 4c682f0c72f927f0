"""Face detectors: OpenCV's Haar cascade (offline default) and YuNet (cv2.FaceDetectorYN).

A detector may be called from several threads at once: each thread runs its own OpenCV object (``PerThread``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.errors import FerError

# Video and cameras: frames are searched on a copy this wide. 400 finds a 48-pixel face in a 640x480 frame within one
# detection period, 320 one of 60 (benchmarks/results/small_faces); the detection runs beside the frame loop.
DEFAULT_DETECT_WIDTH = 400


class DetectorError(FerError, RuntimeError):
    pass


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h in frame pixels
    score: float = 1.0
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None  # (right eye, left eye) in the image


class PerThread:
    """One object per calling thread, made by ``make`` on the thread's first call. OpenCV's detectors are not safe
    to share: a CascadeClassifier keeps its scaled images and a FaceDetectorYN its input size in the object, so two
    threads on one object get each other's faces (issue 50: 60 of 120 photo results wrong from 4 threads)."""

    def __init__(self, make: Callable[[], object], first: object | None = None) -> None:
        self._make = make
        self._local = threading.local()
        if first is not None:
            self._local.value = first

    def get(self):
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._make()
        return value


def _downscale(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Shrink to at most ``width`` pixels wide for detection; returns the image and its scale."""
    scale = min(1.0, width / image.shape[1]) if width else 1.0
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image, scale


class HaarDetector:
    """Frontal-face Haar cascade shipped with OpenCV 4.x and the 5.x contrib wheels, run on a downscaled gray frame."""

    def __init__(self, detect_width: int = DEFAULT_DETECT_WIDTH, min_face: int = 24):
        data = getattr(cv2, "data", None)
        if not hasattr(cv2, "CascadeClassifier") or data is None:
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 keeps them in the contrib wheels only): "
                "pip install 'fer-toolchain[desktop]' (or [headless]), or use --detector yunet --detector-model PATH"
            )
        path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml"
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise DetectorError(f"could not load the Haar cascade at {path}")
        self._cascades = PerThread(lambda: cv2.CascadeClassifier(str(path)), cascade)
        self.detect_width = detect_width
        self.min_face = min_face

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        return self.detect(frame, self.detect_width)

    def detect(self, frame: np.ndarray, width: int) -> list[Detection]:
        """The faces of ``frame`` searched on a copy at most ``width`` pixels wide."""
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small, scale = _downscale(gray, width)
        min_side = max(12, int(self.min_face * scale))
        boxes = self._cascades.get().detectMultiScale(small, scaleFactor=1.15, minNeighbors=5, minSize=(min_side, min_side))
        return [Detection(tuple(float(v) / scale for v in b)) for b in (boxes if len(boxes) else [])]


class YuNetDetector:
    """YuNet via cv2.FaceDetectorYN; gives eye landmarks used for alignment."""

    def __init__(self, model_path: str | Path, detect_width: int = DEFAULT_DETECT_WIDTH, score_threshold: float = 0.7):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise DetectorError(f"YuNet model not found: {model_path} (pass --detector-model PATH)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no FaceDetectorYN; pip install 'fer-toolchain[desktop]' "
                                "(or [headless])")
        make = lambda: _SizedYuNet(cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold, 0.3, 50))
        try:
            first = make()
            first.detect(np.zeros((64, 64, 3), np.uint8))  # another ONNX file loads, and would fail only on a frame
        except cv2.error:
            raise DetectorError(
                f"{model_path} is not a YuNet model OpenCV can load (get face_detection_yunet_2023mar.onnx "
                "from the OpenCV model zoo)"
            ) from None
        self._detectors = PerThread(make, first)
        self.detect_width = detect_width

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        return self.detect(frame, self.detect_width)

    def detect(self, frame: np.ndarray, width: int) -> list[Detection]:
        """The faces of ``frame`` searched on a copy at most ``width`` pixels wide."""
        bgr = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        small, scale = _downscale(bgr, width)
        _, faces = self._detectors.get().detect(small)
        out = []
        for f in faces if faces is not None else []:
            x, y, w, h = (float(v) / scale for v in f[:4])
            eyes = ((float(f[4]) / scale, float(f[5]) / scale), (float(f[6]) / scale, float(f[7]) / scale))
            out.append(Detection((x, y, w, h), float(f[14]), eyes))
        return out


class _SizedYuNet:
    """A FaceDetectorYN and the input size it is set to (set again only when the image size changes)."""

    def __init__(self, detector) -> None:
        self.detector, self.size = detector, None

    def detect(self, image: np.ndarray):
        size = (image.shape[1], image.shape[0])
        if size != self.size:
            self.detector.setInputSize(size)
            self.size = size
        return self.detector.detect(image)


def create_detector(name: str = "haar", model_path: str | Path | None = None, detect_width: int = DEFAULT_DETECT_WIDTH):
    if name == "haar":
        if model_path is not None:
            raise DetectorError("--detector-model is YuNet's file: give --detector yunet with it (haar is built in)")
        return HaarDetector(detect_width)
    if name == "yunet":
        if model_path is None:
            raise DetectorError("--detector yunet needs --detector-model PATH to a YuNet .onnx file")
        return YuNetDetector(model_path, detect_width)
    raise DetectorError(f"unknown detector {name!r}: use haar or yunet")


def crop_face(frame: np.ndarray, det: Detection, margin: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Square crop around the box with ``margin`` added per side, its centre moved by ``offset`` box sides; eyes
    levelled when landmarks exist."""
    x, y, w, h = det.box
    cx, cy = x + w / 2 + offset[0] * max(w, h), y + h / 2 + offset[1] * max(w, h)
    side = max(w, h) * (1 + 2 * margin)
    if det.eyes is not None:
        (rx, ry), (lx, ly) = det.eyes
        angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
        if abs(angle) > 1.0:
            matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
            frame = cv2.warpAffine(frame, matrix, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = int(round(cx + side / 2)), int(round(cy + side / 2))
    hgt, wid = frame.shape[:2]
    pad = max(0, -x0, -y0, x1 - wid, y1 - hgt)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return frame[y0:y1, x0:x1]
