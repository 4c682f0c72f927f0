"""The model contract: everything a consumer needs to feed a model correctly.

Defined once, torch-free. Checkpoints store it, ONNX files carry it in the
metadata entry ``fer_contract``, and the runtime and benchmark read it from
there, never from a duplicated constant.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime.errors import FerError

METADATA_KEY = "fer_contract"
# Version 3 dropped the input conditioning of models trained on a blurred FER2013 copy and added
# ``temperature``. Older files are refused: such a model was trained on images unlike
# real faces, and a file without conditioning was still made before the repaired data.
# Version 4 added the decision rule (``class_prior``, ``prior_correction``); a version 3 file has none.
# Version 5 added ``crop_offset``; an older file crops centred on the box.
CONTRACT_VERSION = 5
OLDEST_READABLE_VERSION = 3
MAX_PRIOR_CORRECTION = 2.0
MAX_INPUT_SIDE = 512  # pixels: far above any face model's input, far below one that would take gigabytes per crop


class ContractError(FerError, ValueError):
    """A model's contract is missing or malformed."""


@dataclass(frozen=True)
class ModelContract:
    classes: tuple[str, ...]
    input_size: tuple[int, int] = (48, 48)  # (height, width)
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    output: str = "logits"  # or "probabilities"
    # The crop fer-run takes around a detector box, framed like the training crops: a square of side
    # max(w, h) * (1 + 2 * crop_margin), its centre moved from the box centre by crop_offset (dx, dy) box sides.
    # FER2013 faces are framed about as tightly as a detector box (benchmarks/scripts/measure_framing.py).
    crop_margin: float = 0.1
    crop_offset: tuple[float, float] = (0.0, 0.0)
    # Softmax temperature fitted on the validation split (calibrated confidence): probabilities are
    # softmax(logits / temperature). 1.0: not calibrated.
    temperature: float = 1.0
    # The decision rule. ``class_prior``: the class frequencies the model was trained with (its sampler's, in class
    # order; empty: unknown). ``prior_correction`` (tau), fitted on validation after the temperature: probabilities
    # are softmax(logits / temperature - tau * log(class_prior)). 0 keeps the training prior (the raw argmax); 1
    # divides it out, as if every class were equally likely.
    class_prior: tuple[float, ...] = ()
    prior_correction: float = 0.0
    # ONNX node names of layers that export and quantization treat specially ("first_conv", "classifier"),
    # recorded at export from the network's own modules instead of guessed from node order.
    layers: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        # types first, one line naming the field: str("abc") would make three classes, int(1.5) would pass as 1
        if isinstance(self.classes, (str, bytes)) or not _sequence_of(self.classes, str):
            raise ContractError(f"classes must be a list of class names, got {self.classes!r:.80}")
        if not _sequence_of(self.input_size, Integral) or len(self.input_size) != 2:
            raise ContractError(f"input_size must be [height, width] in whole pixels, got {self.input_size!r:.80}")
        if not _sequence_of([self.channels], Integral):
            raise ContractError(f"channels must be the whole number 1 or 3, got {self.channels!r:.80}")
        for name in ("mean", "std"):
            if not _sequence_of(getattr(self, name), Real):
                raise ContractError(f"{name} must be a list of numbers, one per channel, got {getattr(self, name)!r:.80}")
        if not _sequence_of(self.class_prior, Real):
            raise ContractError(f"class_prior must be a list of numbers, one per class, got {self.class_prior!r:.80}")
        for name in ("temperature", "crop_margin", "prior_correction"):
            if not _sequence_of([getattr(self, name)], Real):
                raise ContractError(f"{name} must be a number, got {getattr(self, name)!r:.80}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_prior", tuple(float(p) for p in self.class_prior))
        if not _sequence_of(self.crop_offset, Real) or len(self.crop_offset) != 2:
            raise ContractError(f"crop_offset must be [dx, dy] in box sides, got {self.crop_offset!r:.80}")
        object.__setattr__(self, "crop_offset", tuple(float(v) for v in self.crop_offset))
        self.validate()

    def validate(self) -> None:
        if not self.classes:
            raise ContractError("contract has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise ContractError(f"contract has duplicate classes: {list(self.classes)}")
        if len(self.input_size) != 2 or min(self.input_size) < 1 or max(self.input_size) > MAX_INPUT_SIDE:
            raise ContractError(f"input_size must be [height, width] of 1 to {MAX_INPUT_SIDE} pixels, got "
                                f"{list(self.input_size)}")
        if self.channels not in (1, 3):
            raise ContractError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ContractError("mean and std need one value per channel")
        for name in ("mean", "std", "temperature", "crop_margin", "crop_offset", "class_prior", "prior_correction"):
            if not np.isfinite(getattr(self, name)).all():
                raise ContractError(f"{name} must be finite, got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            raise ContractError("std values must be positive")
        if not isinstance(self.output, str) or self.output not in ("logits", "probabilities"):
            raise ContractError(f"output must be 'logits' or 'probabilities', got {self.output!r}")
        if not 0.05 <= self.temperature <= 20.0:
            raise ContractError(f"temperature must be in [0.05, 20], got {self.temperature}")
        if not 0.0 <= self.crop_margin < 1.0:
            raise ContractError(f"crop_margin must be in [0, 1), got {self.crop_margin}")
        if max(abs(v) for v in self.crop_offset) > 0.5:
            raise ContractError(f"crop_offset must be within half a box side, got {list(self.crop_offset)}")
        prior = self.class_prior
        if prior and (len(prior) != self.num_classes or not all(0.0 < p <= 1.0 for p in prior)
                      or abs(sum(prior) - 1.0) > 1e-3):
            raise ContractError(f"class_prior must hold one frequency in (0, 1] per class, summing to 1, got {list(prior)}")
        if not 0.0 <= self.prior_correction <= MAX_PRIOR_CORRECTION:
            raise ContractError(f"prior_correction must be in [0, {MAX_PRIOR_CORRECTION}], got {self.prior_correction}")
        if self.prior_correction and not prior:
            raise ContractError("prior_correction needs a class_prior")

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
        data["class_prior"] = list(self.class_prior)
        data["crop_offset"] = list(self.crop_offset)
        data["version"] = CONTRACT_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        required = ("classes", "input_size", "channels", "mean", "std", "output")
        missing = [k for k in required if k not in data]
        if missing:
            raise ContractError(f"contract is missing {', '.join(missing)}")
        version = data.get("version", 1)
        if not _sequence_of([version], Integral):
            raise ContractError(f"contract version must be a whole number, got {version!r:.40}")
        if version > CONTRACT_VERSION:
            raise ContractError(f"contract version {version} is newer than this runtime understands ({CONTRACT_VERSION})")
        if version < OLDEST_READABLE_VERSION:
            raise ContractError(
                f"contract version {version} comes from an older fer-toolchain (this one reads versions "
                f"{OLDEST_READABLE_VERSION}-{CONTRACT_VERSION}): export the model again with fer-export"
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
            batch[i] = to_model_layout(crop, self.channels, height, width)
        return self.normalize(batch)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """Pixel values (0..255, N x C x H x W, model colour order) -> the model's input."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        out = batch.astype(np.float32)  # always a copy: the caller's pixels stay as they were
        out /= 255.0
        out -= mean
        out /= std
        return out


def _sequence_of(values: Any, kinds: type | tuple[type, ...]) -> bool:
    """A list, tuple or array whose items are all ``kinds`` (numbers exclude bools; Integral excludes 1.0)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        return False
    return all(isinstance(v, kinds) and not isinstance(v, bool) for v in values)


def to_model_layout(crop: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """A BGR, BGRA or gray uint8 image -> uint8 C x H x W in the model's colour mode and size.

    The one conversion: training's decoder and the runtime's preprocessing both call it.
    """
    import cv2

    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    if crop.ndim == 3 and crop.shape[2] == 4:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2BGR)
    if channels == 1:
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        return resize_for_model(crop, height, width)[None]
    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    # Models are trained on RGB; OpenCV frames are BGR.
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return resize_for_model(rgb, height, width).transpose(2, 0, 1)


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
            f"{path} has no '{METADATA_KEY}' metadata: export it with fer-export so it carries its classes and preprocessing"
        )
    return ModelContract.from_json(metadata[METADATA_KEY])
