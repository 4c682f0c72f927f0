"""The model contract: everything a consumer needs to feed a model correctly.

Defined once, torch-free. Checkpoints store it, ONNX files carry it in the
metadata entry ``fer_contract``, and the runtime and benchmark read it from
there, never from a duplicated constant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METADATA_KEY = "fer_contract"
# The newest contract this code reads. A contract is written with the lowest version that holds it
# (2 only with input_deconv), so older runtimes refuse what they would apply wrongly and read the rest.
CONTRACT_VERSION = 2


class ContractError(ValueError):
    """A model's contract is missing or malformed."""


@dataclass(frozen=True)
class ModelContract:
    classes: tuple[str, ...]
    input_size: tuple[int, int] = (48, 48)  # (height, width)
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    output: str = "logits"  # or "probabilities"
    # Fraction of the detector box added on every side before cropping.
    # FER2013 faces are framed tightly, so the default is small.
    crop_margin: float = 0.1
    # Gaussian blur (sigma, in model-input pixels) applied to every input at inference, so sharp
    # camera or test crops look like the (blurrier) images the model was trained on. 0 disables.
    input_blur: float = 0.0
    # Wiener noise-to-signal constant. > 0: the training images were deconvolved for the input_blur sigma
    # (fer-train --train-deconv), and inference inputs get that blur and the same deconvolution.
    input_deconv: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        self.validate()

    def validate(self) -> None:
        if not self.classes:
            raise ContractError("contract has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ContractError(f"contract has duplicate classes: {list(self.classes)}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ContractError(f"input_size must be [height, width], got {list(self.input_size)}")
        if self.channels not in (1, 3):
            raise ContractError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ContractError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ContractError("std values must be positive")
        if self.output not in ("logits", "probabilities"):
            raise ContractError(f"output must be 'logits' or 'probabilities', got {self.output!r}")
        if not 0.0 <= self.input_blur <= 10.0:
            raise ContractError(f"input_blur must be in [0, 10], got {self.input_blur}")
        if not 0.0 <= self.input_deconv < 1.0:
            raise ContractError(f"input_deconv must be in [0, 1), got {self.input_deconv}")
        if self.input_deconv > 0 and self.input_blur <= 0:
            raise ContractError("input_deconv needs an input_blur sigma to deconvolve")
        if not 0.0 <= self.crop_margin < 1.0:
            raise ContractError(f"crop_margin must be in [0, 1), got {self.crop_margin}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def replace(self, **changes: Any) -> ModelContract:
        data = self.to_dict()
        data.update(changes)
        return ModelContract.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["version"] = 2 if self.input_deconv > 0 else 1
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        required = ("classes", "input_size", "channels", "mean", "std", "output")
        missing = [k for k in required if k not in data]
        if missing:
            raise ContractError(f"contract is missing {', '.join(missing)}")
        version = int(data.get("version", CONTRACT_VERSION))
        if version > CONTRACT_VERSION:
            raise ContractError(
                f"contract version {version} is newer than this runtime understands ({CONTRACT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"contract is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ContractError("contract JSON must be an object")
        return cls.from_dict(data)

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """Face crops (BGR, BGRA or gray uint8, any size) -> float32 NCHW batch."""
        height, width = self.input_size
        batch = np.empty((len(crops), self.channels, height, width), dtype=np.float32)
        for i, crop in enumerate(crops):
            batch[i] = _to_model_layout(crop, self.channels, height, width)
        return self.normalize(self.condition(batch))

    def condition(self, batch: np.ndarray) -> np.ndarray:
        """The inference-only input conditioning (``input_blur``, ``input_deconv``) on N x C x H x W pixels."""
        if self.input_blur <= 0:
            return batch
        if self.input_deconv > 0:
            from fer_runtime.deblur import blur_deconvolve

            return blur_deconvolve(batch, self.input_blur, self.input_deconv)
        import cv2

        out = np.empty_like(batch)
        for i in range(len(batch)):
            for ch in range(batch.shape[1]):
                out[i, ch] = cv2.GaussianBlur(batch[i, ch], (0, 0), self.input_blur, borderType=cv2.BORDER_REFLECT)
        return out

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """Pixel values (0..255, N x C x H x W, model colour order) -> the model's input."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        out = batch.astype(np.float32)  # always a copy: the caller's pixels stay as they were
        out /= 255.0
        out -= mean
        out /= std
        return out


def _to_model_layout(crop: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    import cv2

    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    if crop.ndim == 3 and crop.shape[2] == 4:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2BGR)
    if channels == 1:
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        return resize_for_model(crop, height, width)[None].astype(np.float32)
    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    # Models are trained on RGB; OpenCV frames are BGR.
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return resize_for_model(rgb, height, width).transpose(2, 0, 1).astype(np.float32)


def resize_for_model(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The one resize used by training data decoding and by the runtime."""
    import cv2

    if image.shape[0] == height and image.shape[1] == width:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def read_onnx_contract(path: str | Path) -> ModelContract:
    """Read ``fer_contract`` from an ONNX file's metadata (via onnxruntime)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ContractError(f"model file not found: {path}")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ContractError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    return contract_from_session(session, path)


def contract_from_session(session: Any, path: str | Path = "<model>") -> ModelContract:
    metadata = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in metadata:
        raise ContractError(
            f"{path} has no '{METADATA_KEY}' metadata: export it with fer-export so it carries "
            "its classes and preprocessing"
        )
    return ModelContract.from_json(metadata[METADATA_KEY])
