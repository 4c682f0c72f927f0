"""The benchmark's test data: a split of the one data layer (``fer_runtime.data``), decoded for a model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError, DecodedSplit, SplitManifest, discover, load_split, resolve_data_root


def bench_manifest(data_root: str | None, protocol: str | None, manifest: str | None) -> SplitManifest:
    """A run's saved split manifest (exactly the split it was scored on), else the splits of a data root."""
    if manifest:
        path = Path(manifest)
        saved = SplitManifest.load(path / "split_manifest.json" if path.is_dir() else path)
        if data_root:
            saved.root = str(Path(data_root).resolve())
        return saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return discover(resolve_data_root(data_root), protocol)


def class_mapping(model_classes: tuple[str, ...], data_classes: list[str]) -> np.ndarray:
    """Index of each data class in the model's output; a clear error when a class is missing."""
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise DataError(f"the model's classes {list(model_classes)} lack the data's {missing}")
    return np.asarray([model_classes.index(c) for c in data_classes])


def load_for(manifest: SplitManifest, split: str, contract: ModelContract) -> DecodedSplit:
    """The split decoded in the model's colour mode and size (cached); unreadable files come back in ``skipped``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench reports skipped files itself
        return load_split(manifest, split, contract.channels, contract.input_size)
