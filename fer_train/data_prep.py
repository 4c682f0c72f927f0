"""A run's data: its splits (the resumed run's own, or discovered anew), the decoded images as tensors, the base
contract, the data report; and the training split as augmented batches with their targets."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError, SplitManifest, default_cache_dir, discover, load_split
from fer_runtime.data.report import data_report
from fer_train.augment import AugmentConfig
from fer_train.checkpoint import CheckpointError, contract_of
from fer_train.config import TrainConfig
from fer_train.engine import LabelTargets, TrainBatches
from fer_train.placement import Placement, progress_wanted


@dataclass
class PreparedData:
    manifest: SplitManifest
    contract: ModelContract
    decoded: dict
    tensors: dict  # split -> (uint8 images, labels) tensors
    report: dict | None


def prepare_data(cfg: TrainConfig, resume_state: dict | None, placement: Placement, decode_train: bool) -> PreparedData:
    """Splits, decoded images (the training split only when it is trained on, or reported), the base contract, the
    data report."""
    manifest = split_manifest(cfg, resume_state, placement)
    contract = ModelContract(
        classes=manifest.classes, input_size=(cfg.input_size, cfg.input_size), channels=cfg.channels,
        mean=cfg.mean, std=cfg.std, crop_margin=cfg.crop_margin,
        provenance={"data_root": manifest.root, "layout": manifest.layout, "protocol": manifest.protocol,
                    "label_mode": manifest.label_mode, "sampler": cfg.sampler},
    )
    if resume_state is not None and list(contract_of(resume_state).classes) != manifest.classes:
        raise CheckpointError("the checkpoint's classes differ from the data's class folders")
    decoded = {}
    for split in manifest.splits:
        if split == "train" and not decode_train:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decoded[split] = load_split(
                manifest, split, contract.channels, contract.input_size, root=cfg.data_root, cache_dir=cfg.cache_dir,
                strict=cfg.strict, progress=_tqdm if placement.is_main and progress_wanted(cfg.no_progress) else None,
            )
        for w in caught:
            placement.warn(str(w.message))
    tensors = {s: (torch.from_numpy(np.ascontiguousarray(d.images)), torch.from_numpy(d.labels)) for s, d in decoded.items()}
    report = data_report(manifest, decoded) if placement.is_main and resume_state is None else None
    for w in (report or {}).get("warnings", []):
        print(f"fer-train: data: {w}", file=sys.stderr)
    return PreparedData(manifest, contract, decoded, tensors, report)


def check_trainable(data: PreparedData) -> None:
    """A classifier needs two classes at least, and a class whose training images are all unreadable has nothing to
    learn it from."""
    classes = data.manifest.classes
    if len(classes) < 2:
        raise DataError(f"training needs two classes at least; {data.manifest.root} has only {classes}")
    listed = np.bincount([label for _, label in data.manifest.splits["train"]], minlength=len(classes))
    read = np.bincount(data.decoded["train"].labels, minlength=len(classes))
    empty = [c for c, n, m in zip(classes, listed, read) if n and not m]
    if empty:
        raise DataError(f"no readable training image of {', '.join(map(repr, empty))}: nothing to learn "
                        f"{'it' if len(empty) == 1 else 'them'} from (unreadable files are skipped; --strict stops at "
                        "the first)")


def split_manifest(cfg: TrainConfig, resume_state: dict | None, placement: Placement) -> SplitManifest:
    """The resumed run's own splits, or the data's discovered anew."""
    if resume_state is not None and "manifest" in resume_state:
        return SplitManifest.from_dict(resume_state["manifest"])
    manifest, said = discover_splits(cfg)
    for message in said:
        placement.warn(message)
    return manifest


def discover_splits(cfg: TrainConfig) -> tuple[SplitManifest, list[str]]:
    """The data's splits as the options deal them, and the warnings discovery gave (for the caller to pass on)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = discover(cfg.data_root, cfg.protocol, cfg.val_split, cfg.test_split, cfg.seed, cfg.label_mode,
                            exclude=not_classes(cfg), grouping=cfg.grouping())
    return manifest, [str(w.message) for w in caught]


def not_classes(cfg: TrainConfig) -> dict[Path, str]:
    """Folders that may sit under the data root and are never classes: where runs go, and the decode cache."""
    return {Path(cfg.out_dir): "the --out-dir runs are written to",
            Path(cfg.cache_dir or default_cache_dir()): "the decode cache"}


def _tqdm(items, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", leave=False, mininterval=1.0)


def train_batches(cfg: TrainConfig, data: PreparedData, contract: ModelContract) -> TrainBatches | None:
    """The training split as augmented batches, with targets (smoothed, or the FER+ vote distributions); None without
    one (an eval-only resume)."""
    if "train" not in data.tensors:
        return None
    images, labels = data.tensors["train"]
    soft = data.decoded["train"].targets
    targets = LabelTargets(labels, contract.num_classes, cfg.label_smoothing, None if soft is None else torch.from_numpy(soft),
                           sample=data.manifest.label_mode == "probability", seed=cfg.seed)
    aug = AugmentConfig(
        shift=cfg.shift, scale=(cfg.scale_min, cfg.scale_max), rotation=cfg.rotation, hflip=not cfg.no_hflip,
        erasing=cfg.erasing, policy=cfg.policy, mixup=cfg.mixup, cutmix=cfg.cutmix, mix_prob=cfg.mix_prob,
        degrade=cfg.degrade, fixed_shift=cfg.fixed_shift,
    )
    return TrainBatches(images, targets, aug, contract, cfg.batch_size)
