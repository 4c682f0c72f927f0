"""The training stages of an export: distil a student from a teacher, prune a model and fine-tune it.

Each training run is fer-train's own (``fit``) with a ``TrainConfig`` built from the source run's saved config, the
stage's settings and ``--train-option``; with ``--resume`` a finished run is kept and a started one continued.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from torch import nn

from fer_export.config import ExportConfig
from fer_export.prune import prune_channels
from fer_export.rows import torch_row
from fer_runtime.contract import ModelContract
from fer_runtime.data import DecodedSplit, resolve_data_root
from fer_runtime.options import OptionError, checked_values, json_or_text
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fer_train.config import TrainConfig
from fer_train.run_status import run_status
from fer_train.train import fit

# what a pruned checkpoint leaves out of its source: the optimisation state belongs to the unpruned network
NOT_CARRIED = ("format", "format_version", "optimizer", "scheduler", "scaler", "ema_state_dict")


def saved_root(state: dict) -> str | None:
    """The data root a checkpoint's run was made from (its split manifest's)."""
    return (state.get("manifest") or {}).get("root")


# TrainConfig options that the export sets itself for its training runs, and how
FROM_THE_SOURCE_RUN = "it comes from the source run (its splits and input)"
SET_BY_EXPORT = {"data_root": "use --data-root", "out_dir": "use --out-dir", "name": "use --name", "arch": "use --arch",
                 "arch_arg": "use --arch-arg", "teacher": "use --distill-from", "teacher_targets_file": "use --distill-from",
                 "kd_alpha": "use --kd-alpha", "kd_temperature": "use --kd-temperature",
                 "epochs": "use --epochs or --finetune-epochs", "init": "the fine-tune starts from the pruned model",
                 **dict.fromkeys(("seed", "protocol", "val_split", "test_split", "input_size", "channels", "group_by",
                                  "folds", "fold"), FROM_THE_SOURCE_RUN)}
# what a training stage keeps of its source run: how the data was split and labelled, the input, the selection metric
FROM_SOURCE = ("protocol", "label_mode", "val_split", "test_split", "seed", "group_by", "folds", "fold", "input_size",
               "channels", "mean", "std", "monitor")


def train_options(items: list[str]) -> dict:
    """``--train-option KEY=VALUE`` items as TrainConfig values (JSON where the value parses as JSON, else text),
    checked as fer-train checks its flags."""
    values: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in {f.name for f in fields(TrainConfig)}:
            raise OptionError(f"--train-option {item!r}: give KEY=VALUE with a fer-train option name (e.g. batch_size=64)")
        if key in SET_BY_EXPORT:
            raise OptionError(f"--train-option {key}: fer-export sets it ({SET_BY_EXPORT[key]})")
        values[key] = json_or_text(text)
    return checked_values(TrainConfig, values, "--train-option")


def train_config(cfg: ExportConfig, source: dict, **stage: object) -> TrainConfig:
    """A stage's TrainConfig: the source run's splits, input and selection metric (``FROM_SOURCE``), the stage's own
    settings, then --train-option."""
    saved = TrainConfig.from_saved(source.get("train_args", {}))
    values: dict = {k: getattr(saved, k) for k in FROM_SOURCE}
    values.update(no_progress=cfg.no_progress, threads=cfg.threads, freeze=0, **stage)  # every layer trains
    if cfg.distill_from:  # the student (or the pruned model's fine-tune) learns from the teacher, not from labels alone
        values.update(teacher=[cfg.distill_from], kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
    return TrainConfig(**{**values, **train_options(cfg.train_option)})


def train_stage(cfg: ExportConfig, run_dir: Path, train: TrainConfig, what: str) -> None:
    """One training run inside the export; with --resume a finished run is kept and a started one continued."""
    status = run_status(run_dir) if cfg.resume else "new"
    if status == "finished":
        print(f"fer-export: {what}: finished earlier, kept ({run_dir})")
        return
    if status == "started":
        print(f"fer-export: {what}: resuming from {run_dir / 'last.pt'}")
        fit(train, resume=str(run_dir / "last.pt"))
        return
    fit(train)


def distill(cfg: ExportConfig, out: Path, report: dict) -> Path:
    """Train the student (and with --compare-baseline the same student alone) on --data-root, then FER_DATA_ROOT,
    then the teacher's data; the student's best.pt."""
    teacher = load_checkpoint(cfg.distill_from)
    root = resolve_data_root(cfg.data_root, saved_root(teacher))
    kd = train_config(cfg, teacher, data_root=root, arch=cfg.arch, arch_arg=list(cfg.arch_arg), epochs=cfg.epochs,
                      out_dir=str(out), name="student_kd")
    train_stage(cfg, out / "student_kd", kd, "student training")
    report["paths"]["student_checkpoint"] = str(out / "student_kd" / "best.pt")
    if cfg.compare_baseline:
        train_stage(cfg, out / "student_alone", replace(kd, name="student_alone", teacher=None), "baseline student training")
        kd_m = json.loads((out / "student_kd" / "metrics.json").read_text())
        alone_m = json.loads((out / "student_alone" / "metrics.json").read_text())
        report["distillation"] = {
            split: {"kd": {k: kd_m[split][k] for k in ("accuracy", "macro_f1")},
                    "alone": {k: alone_m[split][k] for k in ("accuracy", "macro_f1")}}
            for split in ("val", "test") if split in kd_m
        }
    return out / "student_kd" / "best.pt"


def prune_and_finetune(cfg: ExportConfig, state: dict, model: nn.Module, contract: ModelContract,
                       data: dict[str, DecodedSplit], out: Path, report: dict) -> tuple[Path, dict]:
    """Prune the checkpoint's model, then fine-tune it (``--finetune-epochs``) on --data-root, then FER_DATA_ROOT, then
    the checkpoint's data; the checkpoint to export and its state. ``report``'s last row is the model before pruning."""
    before = report["artefacts"][-1]
    pruned = prune_channels(model, contract, ratio=cfg.prune, flops_speedup=cfg.prune_flops, steps=cfg.prune_steps)
    ckpt = out / "pruned_init.pt"
    pruned_state = {**{k: v for k, v in state.items() if k not in NOT_CARRIED}, "state_dict": pruned.state_dict(),
                    "pruned": True, "epoch": 0, "history": []}
    save_checkpoint(pruned_state, ckpt)
    after = torch_row("pruned (no fine-tune)", pruned, contract, data)
    report["artefacts"].append(after)
    if cfg.finetune_epochs > 0:
        ckpt = _finetune(cfg, state, ckpt, out)
        pruned_state = load_checkpoint(ckpt)
        report["artefacts"].append(torch_row("pruned + fine-tuned", model_from_checkpoint(pruned_state)[0], contract, data))
    report["pruning"] = {
        "ratio": cfg.prune, "flops_target": cfg.prune_flops, "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "flops_reduction": before["macs"] / after["macs"],
    }
    print(f"fer-export: pruned MACs {before['macs'] / 1e6:.1f}M -> {after['macs'] / 1e6:.1f}M "
          f"({before['macs'] / after['macs']:.2f}x), params {before['params']} -> {after['params']}")
    return ckpt, pruned_state


def _finetune(cfg: ExportConfig, state: dict, init: Path, out: Path) -> Path:
    root = resolve_data_root(cfg.data_root, saved_root(state))
    finetune = train_config(cfg, state, init=str(init), data_root=root, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                            warmup_epochs=0.0, out_dir=str(out), name="pruned_finetune")
    train_stage(cfg, out / "pruned_finetune", finetune, "fine-tuning the pruned model")
    return out / "pruned_finetune" / "best.pt"
