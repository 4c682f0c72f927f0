"""Torch-free test data for the benchmark: the runtime's own decoding and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.contract import ModelContract, resize_for_model

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
FER2013_PREFIX = {"val": "PublicTest_", "test": "PrivateTest_", "train": "Training_"}


class BenchDataError(ValueError):
    pass


@dataclass
class BenchData:
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    skipped: list[str]


def find_split(root: str | Path, split: str, protocol: str | None) -> tuple[list[str], list[tuple[Path, int]]]:
    root = Path(root)
    if not root.is_dir():
        raise BenchDataError(f"data root not found: {root}")
    folder = root / ("test" if protocol == "fer2013" and split in ("val", "test") else split)
    if not folder.is_dir():
        folder = root if split == "test" and not (root / "train").exists() else folder
    if not folder.is_dir():
        raise BenchDataError(f"no '{split}' folder under {root}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BenchDataError(f"no class folders in {folder}")
    prefix = FER2013_PREFIX.get(split, "") if protocol == "fer2013" else ""
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*"))
             if p.suffix.lower() in EXTENSIONS and p.name.startswith(prefix)]  # fmt: skip
    if not items:
        raise BenchDataError(f"split '{split}' under {folder} is empty")
    return classes, items


def class_mapping(model_classes: tuple[str, ...], data_classes: list[str]) -> np.ndarray:
    """Index of each data class in the model's output; a clear error when a class is missing."""
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise BenchDataError(f"the model's classes {list(model_classes)} lack the data's {missing}")
    return np.asarray([model_classes.index(c) for c in data_classes])


def load_images(items: list[tuple[Path, int]], contract: ModelContract) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """uint8 N x C x H x W in the model's colour order; unreadable files are skipped and returned."""
    h, w = contract.input_size
    images, labels, paths, skipped = [], [], [], []
    flag = cv2.IMREAD_GRAYSCALE if contract.channels == 1 else cv2.IMREAD_COLOR
    for path, label in items:
        img = cv2.imread(str(path), flag)
        if img is None:
            skipped.append(str(path))
            continue
        if contract.channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = resize_for_model(img, h, w)
        images.append(img.reshape(h, w, contract.channels).transpose(2, 0, 1))
        labels.append(label)
        paths.append(str(path))
    if not images:
        raise BenchDataError("no readable images in the split")
    return np.stack(images), np.asarray(labels), paths, skipped
