"""The benchmark's test data: a split of the one data layer (``fer_runtime.data``), decoded for a model."""

from __future__ import annotations

import warnings
from pathlib import Path

from fer_runtime.contract import ModelContract
from fer_runtime.data import DecodedSplit, SplitManifest, discover, load_split, resolve_data_root
from fer_runtime.data.classes import canonical_class


def bench_manifest(data_root: str | None, protocol: str | None, manifest: str | None) -> SplitManifest:
    """A run's saved split manifest (exactly the split it was scored on), else the splits of a data root.

    The root follows every command's one rule (``resolve_data_root``): the flag, then the environment, then the
    manifest's own root."""
    if manifest:
        path = Path(manifest)
        saved = SplitManifest.load(path / "split_manifest.json" if path.is_dir() else path)
        saved.root = str(Path(resolve_data_root(data_root, saved.root)).expanduser().resolve())
        return with_all_split(canonical_classes(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return with_all_split(canonical_classes(discover(resolve_data_root(data_root), protocol)))


ALL_IMAGES = "all"


def with_all_split(manifest: SplitManifest) -> SplitManifest:
    """The manifest plus a split ``all`` holding every image once: a set kept for evaluation only (CK+) is read whole."""
    items = (tuple(item) for split in manifest.splits.values() for item in split)  # a layout may use test as val too
    manifest.splits[ALL_IMAGES] = list(dict.fromkeys(items))
    return manifest


def canonical_classes(manifest: SplitManifest) -> SplitManifest:
    """The manifest with its class names in the models' words (the labels' indices do not change)."""
    manifest.classes = [canonical_class(c) for c in manifest.classes]
    return manifest


def load_for(manifest: SplitManifest, split: str, contract: ModelContract) -> DecodedSplit:
    """The split decoded in the model's colour mode and size (cached); unreadable files come back in ``skipped``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench reports skipped files itself
        return load_split(manifest, split, contract.channels, contract.input_size)
