"""A run's options, decided once: the defaults, then a resumed run's own, then a recipe, then the flags typed; and
what one invocation asks beyond them (``InvocationFlags``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fer_runtime.data import resolve_data_root
from fer_runtime.options import OptionError
from fer_train.config import FINETUNE_EPOCHS, FINETUNE_FREEZE, FINETUNE_LR_FACTOR, SCRATCH_EPOCHS, TrainConfig


@dataclass(frozen=True)
class InvocationFlags:
    """What one invocation asks beyond the run's config: continue a run (``--resume``), end this sitting early
    (``--stop-after``), only report the data (``--data-report-only``), replace a run of the same name
    (``--overwrite``)."""

    resume: str | None = None
    stop_after: int | None = None
    data_report_only: bool = False
    overwrite: bool = False


def saved_config(resume_state: dict | None) -> TrainConfig | None:
    """The config a checkpoint was trained with (its ``train_args``)."""
    return None if resume_state is None else TrainConfig.from_saved(resume_state.get("train_args", {}))


def merged_config(given: dict, saved: TrainConfig | None) -> TrainConfig:
    """The options given (flags over a recipe) over a resumed run's own over the defaults, resolved. The run's data
    root comes after ``FER_DATA_ROOT``."""
    base = saved or TrainConfig()
    return resolve_config(replace(base, **{"data_root": None, **given}), base.data_root)


def resolve_config(cfg: TrainConfig, saved_root: str | None = None) -> TrainConfig:
    """Every option decided: the data root, lr and weight decay by --opt, mean and std by --channels, the schedule by
    --init (a fine-tune's: fewer epochs, a lower rate, early convolutions frozen, the last epoch kept); ranges checked."""
    adamw = cfg.opt == "adamw"
    finetune = bool(cfg.init)
    resolved = replace(
        cfg,
        data_root=resolve_data_root(cfg.data_root, saved_root),
        epochs=(FINETUNE_EPOCHS if finetune else SCRATCH_EPOCHS) if cfg.epochs is None else cfg.epochs,
        lr=(1e-3 if adamw else 0.05) / (FINETUNE_LR_FACTOR if finetune else 1) if cfg.lr is None else cfg.lr,
        freeze=(FINETUNE_FREEZE if finetune else 0) if cfg.freeze is None else cfg.freeze,
        monitor=("last" if finetune else "macro_f1") if cfg.monitor is None else cfg.monitor,
        weight_decay=(0.05 if adamw else 5e-4) if cfg.weight_decay is None else cfg.weight_decay,
        mean=[0.5] * cfg.channels if cfg.mean is None else cfg.mean,
        std=[0.5] * cfg.channels if cfg.std is None else cfg.std,
    )
    if resolved.epochs < 0 or resolved.batch_size < 1 or resolved.accum_steps < 1:
        raise OptionError("--epochs must be >= 0, --batch-size and --accum-steps >= 1")
    if resolved.threads < 0:  # the command line's bound, for fit(TrainConfig(...)) callers
        raise OptionError(f"--threads must be 0 (all cores) or more, got {resolved.threads}")
    if resolved.fixed_shift and resolved.degrade > 0:
        raise OptionError("--fixed-shift measures one shift alone: leave --degrade at 0")
    _check_grouping(resolved)
    return resolved


def check_resumable(resume_state: dict | None, cfg: TrainConfig, flags: InvocationFlags) -> None:
    """best.pt has no optimizer state: it evaluates (--epochs 0) but does not train on; and --epochs 0 needs a run."""
    if resume_state is None and cfg.epochs == 0 and not flags.data_report_only:
        raise OptionError("--epochs 0 only scores the run given with --resume RUN/best.pt: give --epochs N to train")
    if resume_state is not None and resume_state.get("optimizer") is None:
        start = int(resume_state.get("epoch", 0))
        if end_epoch_of(cfg.epochs, flags.stop_after, start) > start:
            raise OptionError(f"{flags.resume} has no optimizer state (best.pt keeps what evaluation and export need): "
                              "resume from the run's last.pt")


def end_epoch_of(epochs: int, stop_after: int | None, start_epoch: int) -> int:
    """Where this sitting stops: the last epoch, or earlier with --stop-after."""
    return epochs if stop_after is None else min(epochs, start_epoch + stop_after)


def _check_grouping(cfg: TrainConfig) -> None:
    """--folds and --fold make sense only with groups to keep whole; --freeze only with weights to keep; --patience only
    with a metric that can stop improving."""
    if cfg.folds == 1:
        raise OptionError("--folds needs at least 2 folds (0: no cross-validation)")
    if cfg.folds and cfg.group_by is None:
        raise OptionError("--folds deals whole groups to folds: give --group-by REGEX (e.g. '^(S\\d+)_' for CK+ subjects)")
    if cfg.fold is not None and not cfg.folds:
        raise OptionError("--fold trains one fold of a cross-validation: give --folds K with it")
    if cfg.fold is not None and not 1 <= cfg.fold <= cfg.folds:
        raise OptionError(f"--fold must be 1 to --folds ({cfg.folds}), got {cfg.fold}")
    if cfg.folds and cfg.test_split:
        raise OptionError("--test-split does not go with --folds: each fold in turn is the test split")
    if cfg.patience and cfg.monitor == "last":
        raise OptionError("--patience stops when val stops improving; --monitor last keeps every epoch: give "
                          "--monitor accuracy or macro_f1 with it")
    if cfg.freeze and not cfg.init:
        raise OptionError("--freeze keeps weights a trained model gave: use it with --init")
