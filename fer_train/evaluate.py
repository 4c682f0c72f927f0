"""fer-eval: score a checkpoint on a split, reusing the split manifest saved with the run.

Read top to bottom: options -> members (checkpoints) -> data -> probabilities -> metrics -> files.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError, DecodedSplit, SplitManifest, load_split, run_manifest
from fer_runtime.data.report import has_copy_in
from fer_runtime.options import FerCommand, OptionError, config_of, config_options
from fer_runtime.outputs import atomic_write_text, check_output_dir, version_option
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
from fer_train.config import EvalConfig, TrainConfig
from fer_train.engine import predict_logits, score_logits
from fer_train.metrics import metrics_table, plot_confusion_matrix
from fer_train.placement import choose_device
from fer_train.run_folder import prediction_rows, write_predictions


@dataclass
class Members:
    """The checkpoints scored (each model with its own contract: its mean and std), the contract of the first, and the
    split manifest of the run it was trained in."""

    models: list[tuple[nn.Module, ModelContract]]
    contract: ModelContract
    manifest: SplitManifest


@click.command("fer-eval", cls=FerCommand)
@config_options(EvalConfig)
@version_option("fer-eval")
def command(**options) -> int:
    """Evaluate a fer-train checkpoint, or an ensemble of them."""
    return evaluate_checkpoints(config_of(EvalConfig, options))


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a usage or input error or an output that cannot be written."""
    return command.main(argv, prog_name=command.name, standalone_mode=False)


def evaluate_checkpoints(cfg: EvalConfig) -> int:
    check_options(cfg)
    device = choose_device(cfg.device)
    check_output_dir(out_dir_of(cfg))
    members = load_members(cfg)
    data, train = load_data(cfg, members)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    images = torch.from_numpy(np.ascontiguousarray(data.images))
    # the ensemble averages the members' probabilities
    probs = torch.stack([predict_logits(m.to(device), images, c, device, tta=cfg.tta).softmax(1) for m, c in members.models])
    log_probs = probs.mean(0).clamp_min(1e-12).log()
    metrics = score(cfg, log_probs, data, train, members)
    stem = write_metrics(cfg, metrics, len(members.models))
    write_predictions(out_dir_of(cfg) / f"{stem}_predictions.csv", prediction_rows(
        cfg.split, data.paths, torch.from_numpy(data.labels), log_probs, members.contract.classes))
    print_summary(cfg, metrics, len(members.models), out_dir_of(cfg) / f"{stem}.json")
    return 0


def check_options(cfg: EvalConfig) -> None:
    if not cfg.ckpt:
        raise OptionError("--ckpt RUN/best.pt is required (repeat --ckpt for an ensemble)")


def out_dir_of(cfg: EvalConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else Path(cfg.ckpt[0]).resolve().parent


def load_members(cfg: EvalConfig) -> Members:
    """Each checkpoint's model (EMA weights unless --no-ema); all must share classes, channels and input size."""
    states = [load_checkpoint(c) for c in cfg.ckpt]
    members = [model_from_checkpoint(st, prefer_ema=not cfg.no_ema) for st in states]
    contract = members[0][1]
    for path, (_, other) in zip(cfg.ckpt[1:], members[1:]):
        if (other.classes, other.channels, other.input_size) != (contract.classes, contract.channels, contract.input_size):
            raise DataError(f"{path} does not share classes, channels and input size with {cfg.ckpt[0]}")
    saved = TrainConfig.from_saved(states[0].get("train_args", {}))
    manifest = run_manifest(states[0].get("manifest"), cfg.data_root, saved.split_rules())
    manifest.check_classes(contract.classes)
    return Members(members, contract, manifest)


def load_data(cfg: EvalConfig, members: Members) -> tuple[DecodedSplit, DecodedSplit | None]:
    """The split scored, and the training split to find its pixel-identical copies in (unless --no-dedup)."""
    manifest, contract = members.manifest, members.contract
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_split(manifest, cfg.split, contract.channels, contract.input_size, cache_dir=cfg.cache_dir,
                          strict=cfg.strict)
        train = None
        if cfg.split != "train" and not cfg.no_dedup and "train" in manifest.splits:
            train = load_split(manifest, "train", contract.channels, contract.input_size, cache_dir=cfg.cache_dir)
    for w in caught:
        print(f"fer-eval: warning: {w.message}", file=sys.stderr)
    return data, train


def score(cfg: EvalConfig, log_probs: torch.Tensor, data: DecodedSplit, train: DecodedSplit | None,
          members: Members) -> dict:
    """Metrics of the (ensemble's) probabilities, and again without the images that have a copy in train."""
    classes = list(members.contract.classes)
    labels = torch.from_numpy(data.labels)
    metrics, _ = score_logits(log_probs, labels, classes)
    metrics.update(split=cfg.split, tta=cfg.tta, checkpoints=[str(Path(c).resolve()) for c in cfg.ckpt],
                   skipped_files=len(data.skipped), data_root=members.manifest.root)
    if train is not None:
        unseen = torch.from_numpy(~has_copy_in(train.images, data.images))
        if unseen.any():
            dedup, _ = score_logits(log_probs[unseen], labels[unseen], classes)
            metrics["without_train_copies"] = {"num_samples": int(unseen.sum()), "accuracy": dedup["accuracy"],
                                               "macro_f1": dedup["macro_f1"]}
    return metrics


def write_metrics(cfg: EvalConfig, metrics: dict, n_members: int) -> str:
    """eval_SPLIT[_TTA][_ensembleN].json/.md and the confusion matrix (the command writes the per-image
    ..._predictions.csv beside them); each file whole or absent (atomic writes)."""
    out_dir = out_dir_of(cfg)
    stem = f"eval_{cfg.split}" + ("" if cfg.tta == "none" else f"_{cfg.tta}")
    stem += f"_ensemble{n_members}" if n_members > 1 else ""
    out_dir.mkdir(parents=True, exist_ok=True)  # an OSError (a full disk) is one line: FerCommand
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / f"{stem}.md", f"# {stem}\n\n{metrics_table(metrics)}\n")
    plot_confusion_matrix(metrics, out_dir / f"{stem}_confusion_matrix.png", title=f"{cfg.split} ({cfg.tta})")
    return stem


def print_summary(cfg: EvalConfig, metrics: dict, n_members: int, written: Path) -> None:
    print(metrics_table(metrics))
    print(f"{cfg.split}: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} ({metrics['num_samples']} "
          f"images, tta {cfg.tta}, {n_members} model(s)) -> {written}")
    if "without_train_copies" in metrics:
        d = metrics["without_train_copies"]
        print(f"{cfg.split} without images that have a pixel-identical copy in train: accuracy {d['accuracy']:.4f} "
              f"macro-F1 {d['macro_f1']:.4f} ({d['num_samples']} images)")


if __name__ == "__main__":
    sys.exit(main())
