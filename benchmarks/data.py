"""The benchmark's test data: a split of the one data layer (``fer_runtime.data``), decoded for a model."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError, DecodedSplit, SplitManifest, discover, load_split, resolve_data_root


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


# Class-folder names of other data sets, by meaning, in the shipped models' words (CK+ says anger and sadness).
CLASS_ALIASES = {"anger": "angry", "sadness": "sad", "happiness": "happy", "surprised": "surprise", "fearful": "fear",
                 "disgusted": "disgust"}  # fmt: skip


ALL_IMAGES = "all"


def with_all_split(manifest: SplitManifest) -> SplitManifest:
    """The manifest plus a split ``all`` holding every image once: a set kept for evaluation only (CK+) is read whole."""
    items = (tuple(item) for split in manifest.splits.values() for item in split)  # a layout may use test as val too
    manifest.splits[ALL_IMAGES] = list(dict.fromkeys(items))
    return manifest


def canonical_class(name: str) -> str:
    """A class name in the shipped models' words, lower case: the form two class lists are matched in."""
    return CLASS_ALIASES.get(name.lower(), name.lower())


def canonical_classes(manifest: SplitManifest) -> SplitManifest:
    """The manifest with its class names in the models' words (the labels' indices do not change)."""
    manifest.classes = [canonical_class(c) for c in manifest.classes]
    return manifest


@dataclass
class SharedClasses:
    """How a model is scored on a data set: on the classes both have.

    Images of a class the model lacks are left out; a prediction of a class the data lacks is always wrong (the
    confusion matrix's ``other`` column): the model decides over all its classes, as it does for a user.
    """

    classes: list[str]  # in data order
    keep: np.ndarray  # bool per image: its class is one the model has
    labels: np.ndarray  # the kept images' labels, as indices into ``classes``
    label_in_model: np.ndarray  # the kept images' labels, as indices into the model's classes
    from_model: np.ndarray  # model class index -> index into ``classes``, len(classes) for "other"
    left_out: list[str]  # data classes the model lacks
    extra: list[str]  # model classes the data lacks

    def note(self) -> str:
        parts = []
        if self.left_out:
            parts.append(f"images of {', '.join(self.left_out)} left out (not among the model's classes)")
        if self.extra:
            parts.append(f"a prediction of {', '.join(self.extra)} counts as wrong (not in the data)")
        return "; ".join(parts)


def shared_classes(model_classes: tuple[str, ...], data_classes: list[str], labels: np.ndarray) -> SharedClasses:
    model_classes = [canonical_class(c) for c in model_classes]  # a model trained on CK+'s own words still matches
    data_classes = [canonical_class(c) for c in data_classes]
    shared = [c for c in data_classes if c in model_classes]
    if not shared:
        raise DataError(f"the model's classes {model_classes} share none with the data's {data_classes}")
    data_to_shared = np.asarray([shared.index(c) if c in shared else -1 for c in data_classes])
    mapped = data_to_shared[np.asarray(labels, np.int64)]
    keep = mapped >= 0
    return SharedClasses(
        classes=shared, keep=keep, labels=mapped[keep],
        label_in_model=np.asarray([model_classes.index(shared[i]) for i in mapped[keep]], np.int64),
        from_model=np.asarray([shared.index(c) if c in shared else len(shared) for c in model_classes]),
        left_out=[c for c in data_classes if c not in model_classes], extra=[c for c in model_classes if c not in shared],
    )  # fmt: skip


def load_for(manifest: SplitManifest, split: str, contract: ModelContract) -> DecodedSplit:
    """The split decoded in the model's colour mode and size (cached); unreadable files come back in ``skipped``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bench reports skipped files itself
        return load_split(manifest, split, contract.channels, contract.input_size)
