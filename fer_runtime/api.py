"""The Python API: facial expressions of the faces in an image, in one call, as plain Python records.

    from fer_runtime import FaceExpressionRecognizer

    fer = FaceExpressionRecognizer()                 # the shipped FER+ model
    fer.analyze("photo.jpg")                         # a path, or a uint8 array (BGR unless color="rgb")
    # [{"box": [x, y, w, h], "emotions": {"angry": 0.01, ...}, "dominant_emotion": "happy", "confidence": 0.93}]

The probabilities and labels are fer-run's: the same model call (``ModelBackend.probabilities``: the contract's
preprocessing and decision rule) through the same engine (``fer_runtime.engine.FaceEngine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.data import read_photo
from fer_runtime.data.images import composite_alpha
from fer_runtime.detect import DEFAULT_DETECT_WIDTH, create_detector
from fer_runtime.engine import DEFAULT_MODEL, FaceEngine, FaceResult

ImageLike = str | Path | np.ndarray
COLORS = ("bgr", "rgb")


class FaceExpressionRecognizer:
    """Detects faces and classifies their expression with an exported ONNX model (no torch).

    Args:
        model: a shipped model by name (``"ferplus"``: 8 classes with contempt, the default; ``"fer2013"``: 7
            classes), or the path of any ``.onnx`` file fer-export wrote (it carries its classes and preprocessing).
        detector: ``"haar"`` (OpenCV's cascade, offline) or ``"yunet"`` with ``detector_model`` (a YuNet ``.onnx``).
        detector_model: the YuNet file for ``detector="yunet"``.
        detect_width: faces are searched on a copy of the image this many pixels wide (photos: at least 640, where a
            40 px face is found).
        provider: ONNX Runtime execution provider, as fer-run's ``--provider``: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threads: ONNX Runtime threads (0: all cores).
        prior: the decision rule, as fer-run's ``--prior``: ``"model"`` (the model's own, fitted on validation),
            ``"train"`` (the training prior: the raw argmax) or ``"balanced"`` (every expression equally likely).

    Raises ``ContractError`` for a model file that is missing or not a fer-export model, ``ProviderError`` for a
    provider this machine cannot run, ``DetectorError`` for a detector that cannot load.

    One recognizer may be shared by threads: concurrent ``analyze`` and ``classify_crops`` calls give exactly the
    records of the same calls made alone (each thread runs its own OpenCV detector; the model session is shared).
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, detector: str = "haar",
                 detector_model: str | Path | None = None, detect_width: int = DEFAULT_DETECT_WIDTH, provider: str = "auto",
                 threads: int = 1, prior: str = "model") -> None:
        self._engine = FaceEngine(model, create_detector(detector, detector_model, detect_width), threads=threads,
                                  provider=provider, prior=prior)

    @property
    def classes(self) -> list[str]:
        """The model's classes, in the order of its output."""
        return list(self._engine.classes)

    @property
    def provider(self) -> str:
        """What runs the model: ``"cpu"``, ``"cuda"``, ..."""
        return self._engine.model.provider.name

    def analyze(self, image: ImageLike, *, color: str = "bgr", crops: bool = False) -> list[dict]:
        """Every face in one image, from left to right.

        Args:
            image: a file path, or a uint8 array: H x W (gray), H x W x 3 or H x W x 4 (with alpha).
            color: the channel order of an array: ``"bgr"`` (OpenCV's, the default) or ``"rgb"`` (PIL, matplotlib,
                imageio). A file is always read correctly, whatever this says.
            crops: the image already is one face crop (e.g. a 48x48 FER2013 image): no detection, one record whose
                box is the whole image.

        Returns:
            One dict per face, with Python types only (``json.dumps`` takes it): ``box`` ``[x, y, w, h]`` in pixels of
            the image, ``emotions`` (class -> calibrated probability, summing to 1), ``dominant_emotion`` (the label
            fer-run gives) and ``confidence`` (its probability). An image without a face gives ``[]``.
        """
        bgr, scale = _as_bgr(image, color)
        return self._analyze(bgr, crops, scale)

    def _analyze(self, bgr: np.ndarray, crops: bool, scale: int = 1) -> list[dict]:
        """``analyze`` of a decoded image; ``scale``: the file's pixels per image pixel (a photo decoded reduced)."""
        return [_record(r.scaled(scale), self._engine.classes) for r in self._engine.process_image(bgr, crops)]

    def classify_crops(self, crops: Sequence[ImageLike], *, color: str = "bgr") -> list[dict]:
        """Face crops (paths or uint8 arrays of any size) classified in one batch: one record per crop, in order,
        each as ``analyze(crop, crops=True)[0]`` would give it."""
        decoded = [_as_bgr(c, color) for c in crops]
        results = self._engine.process_crops([image for image, _ in decoded])
        return [_record(r.scaled(scale), self._engine.classes) for r, (_, scale) in zip(results, decoded)]


def _record(face: FaceResult, classes: tuple[str, ...]) -> dict:
    return {
        "box": [int(round(float(v))) for v in face.box],
        "emotions": {c: float(p) for c, p in zip(classes, face.probs)},
        "dominant_emotion": str(face.label),
        "confidence": float(face.confidence),
    }


def _as_bgr(image: ImageLike, color: str) -> tuple[np.ndarray, int]:
    """A path or array -> a gray or BGR uint8 array, the runtime's input, and the file's pixels per array pixel (a
    photo over the pixel limit is decoded reduced). An array's alpha is composited on black, as a file's is."""
    if color not in COLORS:
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"no image file {image}")
        img, scale = read_photo(image)
        if img is None:
            raise ValueError(f"{image} is not an image fer-run reads (JPEG, PNG, BMP, TIFF, WebP or PNM)")
        return img, scale
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (0-255), got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))) or min(img.shape[:2]) < 1:
        raise ValueError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {img.shape}")
    if img.ndim == 3 and color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    if img.ndim == 3 and img.shape[2] == 4:
        img = composite_alpha(img)
    return np.ascontiguousarray(img), 1
