"""Where a run stands (``TrainingState``: epochs done, history, best epoch), restored from a checkpoint and saved
into one: last.pt holds everything to resume exactly, best.pt what evaluation and export need."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fer_runtime.data import SplitManifest
from fer_runtime.outputs import atomic_write_text
from fer_train.checkpoint import save_checkpoint
from fer_train.config import TrainConfig
from fer_train.engine import Optimisation
from fer_train.model_setup import BuiltModel


@dataclass
class TrainingState:
    """Where the run stands: epochs done, their history, the best epoch so far and the epochs since it."""

    epoch: int
    history: list
    best: dict
    stale: int = 0

    def record(self, epoch: int, stats: dict, lr: float, val_metrics: dict, monitor: str) -> bool:
        """One more epoch; whether it is the best so far."""
        self.epoch = epoch
        self.history.append({"epoch": epoch, **stats, "lr": lr, "val_loss": val_metrics["loss"],
                             "val_accuracy": val_metrics["accuracy"], "val_macro_f1": val_metrics["macro_f1"]})
        value = val_metrics["accuracy" if monitor == "last" else monitor]
        improved = monitor == "last" or value > self.best["value"]  # "last": a fixed schedule, best.pt its last epoch
        if improved:
            self.best, self.stale = {"metric": monitor, "value": value, "epoch": epoch}, 0
        else:
            self.stale += 1
        return improved


def restore_state(cfg: TrainConfig, resume_state: dict | None, opt: Optimisation) -> TrainingState:
    """A new run's start, or the resumed run's epoch, history, best epoch, optimizer, schedule and RNG state."""
    best = {"metric": cfg.monitor, "value": -1.0, "epoch": -1}
    if resume_state is None:
        return TrainingState(0, [], best)
    start_epoch = int(resume_state.get("epoch", 0))
    best = dict(resume_state.get("best", best))
    for key, obj in (("optimizer", opt.optimizer), ("scheduler", opt.scheduler), ("scaler", opt.scaler)):
        if obj is not None and resume_state.get(key) is not None and cfg.epochs > 0:
            obj.load_state_dict(resume_state[key])
    if resume_state.get("rng_state") is not None:
        torch.set_rng_state(resume_state["rng_state"])
    stale = max(0, start_epoch - best["epoch"]) if best["epoch"] > 0 else 0
    return TrainingState(start_epoch, list(resume_state.get("history", [])), best, stale)


def checkpoint_state(cfg: TrainConfig, built: BuiltModel, opt: Optimisation, state: TrainingState,
                     manifest: SplitManifest, val_metrics: dict) -> dict:
    """Everything needed to rebuild, resume exactly, evaluate or export the run at this epoch."""
    return {
        "model": {"name": built.name, "kwargs": built.kwargs},
        "pruned": built.pruned,
        "state_dict": contiguous(built.model.state_dict()),
        "ema_state_dict": contiguous(built.ema.module.state_dict()) if built.ema is not None else None,
        "ema_updates": built.ema.updates if built.ema is not None else 0,
        "contract": built.contract.to_dict(),
        "train_args": asdict(cfg),
        "epoch": state.epoch,
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
        "rng_state": torch.get_rng_state(),
        "history": state.history,
        "best": state.best,
        "manifest": manifest.to_dict(),
        "val_metrics": val_metrics,
    }


def contiguous(state_dict: dict) -> dict:
    """Tensors in the default (NCHW) layout, so a ``--channels-last`` checkpoint loads like any other."""
    return {k: v.contiguous() for k, v in state_dict.items()}


def save_epoch(run_dir: Path, state: dict, improved: bool) -> None:
    """best.pt when the epoch improved, last.pt and history.json always; each file whole or absent."""
    if improved:
        save_checkpoint(weights_only_state(state), run_dir / "best.pt")
    save_checkpoint(state, run_dir / "last.pt")
    atomic_write_text(run_dir / "history.json", json.dumps(state["history"], indent=2))


# resuming needs these; evaluation, export and --init do not, and the optimizer's moments are twice the weights' size
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng_state")


def weights_only_state(state: dict) -> dict:
    """best.pt: last.pt's state without what only resuming needs (last.pt keeps it)."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}
