"""fer-train: train an expression classifier on image folders.

The command and the flow of a run, each stage in the module that says so: options (``run_config``), where the process
runs (``placement``), data (``data_prep``), teachers (``distill_setup``), model (``model_setup``), optimizer and loss
(``optimisation``), the epochs (``engine``; ``training_state`` for what a checkpoint holds), the run folder and its
reports (``run_folder``). Distributed with ``torchrun --nproc_per_node N -m fer_train ...`` (DDP; rank 0 writes).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import torch

from fer_runtime.data.report import write_data_report
from fer_runtime.errors import EXIT_INTERRUPTED, FerError, OutputError, os_error, sigterm_as_interrupt
from fer_runtime.options import FerCommand, OptionError, config_options, given_options, load_recipe
from fer_runtime.outputs import check_output_dir, version_option
from fer_train.checkpoint import load_checkpoint
from fer_train.config import TrainConfig
from fer_train.cross_validation import cross_validate
from fer_train.data_prep import PreparedData, check_trainable, prepare_data, train_batches
from fer_train.distill_setup import keep_teacher_targets, load_teachers, make_distillation
from fer_train.engine import Distillation, epoch_indices, evaluate, train_one_epoch
from fer_train.model_setup import BuiltModel, build_model
from fer_train.optimisation import make_loss, make_optimisation
from fer_train.placement import Placement, place_process, progress_wanted
from fer_train.run_config import (
    InvocationFlags,
    check_resumable,
    end_epoch_of,
    merged_config,
    resolve_config,
    saved_config,
)
from fer_train.run_folder import TensorBoard, final_report, make_run_folder, replace_old_run, run_dir_for
from fer_train.run_status import finished
from fer_train.training_state import checkpoint_state, restore_state, save_epoch

CURRENT_RUN: dict = {}  # the run folder of the run in progress, for the interrupt message


# ---------------------------------------------------------------------------------------------------- the command


@click.command("fer-train", cls=FerCommand)
@config_options(TrainConfig)
@click.option("--config", "recipe", default=None, metavar="RECIPE.toml", show_default="none",
              help="options from a recipe file (keys as in config.json, e.g. models/recipes/ferplus.toml; "
              "base = \"other.toml\" starts from another recipe); flags given here override it")
@click.option("--resume", default=None, metavar="RUN/last.pt", show_default="none",
              help="continue from RUN/last.pt (its options, unless given here); with --epochs 0 only evaluates")
@click.option("--stop-after", type=int, default=None, metavar="N", show_default="none",
              help="end this sitting after N more epochs (resume later)")
@click.option("--overwrite", is_flag=True, show_default="off", help="replace an existing run of the same --name")
@click.option("--data-report-only", is_flag=True, show_default="off",
              help="write data_report.json/.md for the data and stop (no run folder)")
@version_option("fer-train")
@click.pass_context
def command(ctx: click.Context, recipe: str | None, resume: str | None, stop_after: int | None, overwrite: bool,
            data_report_only: bool, **_options) -> int:
    """Train a facial expression classifier on image folders.

    Options come from the defaults, then a resumed run's own (--resume), then a recipe (--config), then the flags typed.
    """
    typed = given_options(TrainConfig, ctx)
    given = {**(load_recipe(recipe, TrainConfig, "train") if recipe else {}), **typed}
    fixed = [f"--{k.replace('_', '-')}" for k in INIT_FIXES if k in typed]
    if given.get("init") and fixed and not resume:  # a recipe's own (its base's arch) is the init's and stays quiet
        raise OptionError(f"--init {given['init']} brings its architecture and input normalisation: drop {', '.join(fixed)}")
    return train_command(given, InvocationFlags(resume, stop_after, data_report_only, overwrite))


INIT_FIXES = ("arch", "arch_arg", "pretrained", "mean", "std")  # what --init's model decides; refused when typed with it


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a usage or input error or an output that cannot be written (a full disk), 130 interrupted
    by Ctrl-C or SIGTERM alike."""
    return command.main(argv, prog_name=command.name, standalone_mode=False)


def train_command(given: dict, flags: InvocationFlags) -> int:
    """One sitting from the command line: an error or an interrupt after the first epoch says how to resume."""
    CURRENT_RUN.clear()
    try:
        with sigterm_as_interrupt():
            resume_state = load_checkpoint(flags.resume) if flags.resume else None
            cfg = merged_config(given, saved_config(resume_state))
            check_resumable(resume_state, cfg, flags)
            if cfg.folds and cfg.fold is not None and not (flags.data_report_only or flags.resume):  # in the folds' folder
                run_cross_validation(replace(cfg, fold=None), flags, only=cfg.fold)
            else:
                train_run(cfg, flags, resume_state)
        return 0
    except KeyboardInterrupt:
        last = _last_checkpoint()
        if last is not None:
            print(f"fer-train: interrupted; {_going_on(last)}", file=sys.stderr)
        else:
            print("fer-train: interrupted before the first epoch finished; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FerError, OSError) as exc:
        raise _with_resume_hint(exc) from None


def fit(cfg: TrainConfig, resume: str | None = None, stop_after: int | None = None, overwrite: bool = False) -> RunResult:
    """Train as ``fer-train`` does, from a config: what fer-export's distillation and fine-tunes call."""
    flags = InvocationFlags(resume, stop_after, overwrite=overwrite)
    resume_state = load_checkpoint(resume) if resume else None
    saved = saved_config(resume_state)
    cfg = resolve_config(cfg, saved.data_root if saved else None)
    check_resumable(resume_state, cfg, flags)
    return train_run(cfg, flags, resume_state)


class StoppedRun(FerError):
    """An error once a run has a ``last.pt``: the message says how to continue it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _with_resume_hint(exc: Exception) -> FerError:
    error = exc if isinstance(exc, FerError) else os_error(exc)
    last = _last_checkpoint()
    if last is None:
        return error
    return StoppedRun(f"{error}; {_going_on(last)}", error.exit_code)


def _going_on(last: Path) -> str:
    """How a stopped run goes on: --resume, or for a cross-validation the command that continues it."""
    again = CURRENT_RUN.get("cross_validation")
    return f"{last} holds the last finished epoch ({f'{again} goes on' if again else f'continue with --resume {last}'})"


def _last_checkpoint() -> Path | None:
    last = CURRENT_RUN["run_dir"] / "last.pt" if CURRENT_RUN.get("run_dir") else None
    return last if last is not None and last.exists() else None


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    run_dir: Path | None
    results: dict = field(default_factory=dict)  # val/test metrics of best.pt, best epoch, complete
    history: list = field(default_factory=list)


def train_run(cfg: TrainConfig, flags: InvocationFlags, resume_state: dict | None,
              on_start: Callable[[], None] | None = None) -> RunResult:
    """The stages of a run: placement, data, teachers, model, run folder, epochs, final report. ``on_start`` is called
    once data and model are known to work, before the run folder is made (a cross-validation's own folder); by default
    --overwrite removes the old run there."""
    if cfg.folds and cfg.fold is None and not flags.data_report_only:
        if flags.resume:
            raise OptionError("--resume continues one run: to continue a cross-validation, give its command again")
        return RunResult(run_cross_validation(cfg, flags))
    placement = place_process(cfg)
    if flags.data_report_only:
        return report_data_only(cfg, resume_state, placement, flags.overwrite)
    run_dir = run_dir_for(cfg, flags)
    CURRENT_RUN["run_dir"] = run_dir if flags.resume else None  # a run to point to once it is this one's
    data = prepare_data(cfg, resume_state, placement, decode_train=cfg.epochs > 0)
    if cfg.epochs > 0:
        check_trainable(data)
    teachers = load_teachers(cfg, data, placement)
    built = build_model(cfg, data, resume_state, placement)
    cfg = replace(cfg, arch=built.name)  # the checkpoint and config record the architecture actually trained
    distill = make_distillation(cfg, teachers, data, built.contract, placement)
    new_folder = not run_dir.exists() or (flags.overwrite and not flags.resume)
    try:
        if placement.is_main:  # made only now that data and model are known to work: a failed start leaves no folder
            (on_start or (lambda: replace_old_run(run_dir, flags)))()
            make_run_folder(run_dir, cfg, flags, data, built, placement)
            CURRENT_RUN["run_dir"] = run_dir
            keep_teacher_targets(run_dir, cfg, teachers, distill, data)
        result = train_epochs(cfg, flags.stop_after, data, built, distill, resume_state, placement, run_dir)
        if placement.is_main:
            result.results = final_report(run_dir, data, built, placement, result.results, result.history)
    except BaseException:
        # a run that fails (a full disk, an interrupt) before its first last.pt leaves no folder: the same command
        # can simply be run again; once last.pt exists the folder stays, to be resumed
        if placement.is_main and new_folder and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if placement.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def run_cross_validation(cfg: TrainConfig, flags: InvocationFlags, only: int | None = None) -> Path:
    """``cross_validate`` under the name it goes on with (cv-DATE-TIME when none was given), which the messages about
    going on name."""
    named = replace(cfg, name=cfg.name or f"cv-{time.strftime('%Y%m%d-%H%M%S')}")
    again = ("the same command" + ("" if cfg.name else f" with --name {named.name}")
             + (" without --overwrite" if flags.overwrite else ""))
    CURRENT_RUN["cross_validation"] = again
    return cross_validate(named, flags, train_run, only, again)


def report_data_only(cfg: TrainConfig, resume_state: dict | None, placement: Placement, overwrite: bool) -> RunResult:
    """--data-report-only: data_report.json/.md in --out-dir, and no run folder; an earlier report there is replaced
    only with --overwrite."""
    out = check_output_dir(cfg.out_dir)
    CURRENT_RUN["run_dir"] = None
    earlier = [out / f"data_report.{ext}" for ext in ("json", "md") if (out / f"data_report.{ext}").exists()]
    if earlier and not overwrite:
        raise OutputError(f"{earlier[0]} already exists: pick another --out-dir, or replace it with --overwrite")
    data = prepare_data(cfg, resume_state, placement, decode_train=True)
    out.mkdir(parents=True, exist_ok=True)
    written = write_data_report(data.report, out)
    print(f"fer-train: data report in {', '.join(map(str, written))}")
    return RunResult(None)


def train_epochs(cfg: TrainConfig, stop_after: int | None, data: PreparedData, built: BuiltModel,
                 distill: Distillation | None, resume_state: dict | None, placement: Placement,
                 run_dir: Path) -> RunResult:
    """The epochs of this sitting: train, validate, keep best.pt and last.pt; resumable exactly."""
    batches = train_batches(cfg, data, built.contract)
    labels = data.tensors["train"][1] if batches is not None else None
    opt = make_optimisation(cfg, built.model, built.ema, 0 if labels is None else len(labels), placement)
    loss_fn, sample_weights = make_loss(cfg, labels, built.contract.num_classes)
    loss_fn = loss_fn.to(placement.device)
    training = restore_state(cfg, resume_state, opt)
    val_images, val_labels = data.tensors["val"]
    end_epoch = end_epoch_of(cfg.epochs, stop_after, training.epoch)
    complete, planned = end_epoch >= cfg.epochs, cfg.epochs  # not complete when --stop-after ends this sitting early
    if resume_state is not None and cfg.epochs == 0:  # only evaluates: the run is as finished as it was
        planned = int(resume_state.get("train_args", {}).get("epochs", 0))
        complete = finished(run_dir, planned, int(resume_state.get("epoch", 0)))
    with TensorBoard(run_dir) as tensorboard:
        for epoch in range(training.epoch, end_epoch):
            order = epoch_indices(len(labels), epoch, cfg.seed, sample_weights, placement.rank, placement.world)
            batches.targets.set_epoch(epoch)
            bar = _epoch_progress(cfg, epoch, len(batches.split(order))) if placement.is_main else None
            stats = train_one_epoch(built.train_model, batches, order, loss_fn, opt, placement.device, distill, bar)
            val_metrics, _ = evaluate(built.for_eval(), val_images, val_labels, built.contract, placement.device,
                                      amp=placement.amp)
            improved = training.record(epoch + 1, stats, opt.optimizer.param_groups[0]["lr"], val_metrics, cfg.monitor)
            if placement.is_main:
                save_epoch(run_dir, checkpoint_state(cfg, built, opt, training, data.manifest, val_metrics), improved)
                print_epoch(cfg, training.epoch, stats, val_metrics, improved)
                tensorboard.add(training.history[-1])
            if cfg.patience and training.stale >= cfg.patience:
                if placement.is_main:
                    print(f"fer-train: early stop, no {cfg.monitor} gain for {cfg.patience} epochs")
                complete = True
                break
    return RunResult(run_dir, {"best": training.best, "complete": complete, "epochs": planned}, training.history)


def _epoch_progress(cfg: TrainConfig, epoch: int, total: int):
    if not progress_wanted(cfg.no_progress):
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)


def print_epoch(cfg: TrainConfig, epoch: int, stats: dict, val_metrics: dict, improved: bool) -> None:
    print(f"epoch {epoch:3d}/{cfg.epochs} | loss {stats['train_loss']:.4f} | val loss {val_metrics['loss']:.4f} "
          f"acc {val_metrics['accuracy']:.4f} F1 {val_metrics['macro_f1']:.4f}{' *' if improved else ''} | "
          f"{stats['samples_per_second']:.0f} img/s (loader {stats['loader_samples_per_second']:.0f} img/s) | "
          f"{stats['train_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
