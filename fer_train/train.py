"""fer-train: train an expression classifier on image folders.

Read top to bottom: options (``TrainConfig``, resolved once) -> data -> model -> optimizer/schedule -> epochs
(train_one_epoch, evaluate, checkpoint) -> final metrics and plots.
Distributed with ``torchrun --nproc_per_node N -m fer_train ...`` (DDP; rank 0 writes).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ModelContract
from fer_runtime.data import (
    SplitManifest,
    default_cache_dir,
    discover,
    load_split,
    resolve_data_root,
    write_skipped_log,
)
from fer_runtime.data.report import data_report, write_data_report
from fer_runtime.errors import EXIT_INTERRUPTED, FerError, OutputError, os_error, sigterm_as_interrupt
from fer_runtime.options import FerCommand, OptionError, config_options, given_options, load_recipe
from fer_runtime.outputs import atomic_write_text, check_output_dir, version_option
from fer_train.augment import AugmentConfig
from fer_train.checkpoint import (
    CheckpointError,
    contract_of,
    fit_modules_to_state_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from fer_train.config import TrainConfig
from fer_train.engine import (
    Distillation,
    LabelTargets,
    ModelEma,
    Optimisation,
    TrainBatches,
    cpu_has_native_bf16,
    epoch_indices,
    evaluate,
    resolve_amp,
    train_one_epoch,
)
from fer_train.losses import SoftTargetLoss, class_weights_from_counts
from fer_train.metrics import metrics_table, plot_confusion_matrix, plot_curves
from fer_train.models import count_parameters, create_model, parse_arch_args
from fer_train.onnx_init import file_sha256, is_onnx_init, model_from_onnx, refit_batchnorm
from fer_train.qat import is_qat, prepare_qat
from fer_train.teacher import (
    LoadedTeacher,
    check_teachers,
    load_targets,
    load_teacher,
    make_teacher,
    save_targets,
    stored_teacher_targets,
    teacher_paths,
)

RUN_STATE: dict = {}  # the run folder of the run in progress, for the interrupt message


@dataclass(frozen=True)
class Sitting:
    """What one invocation asks beyond the run's config: continue a run (``--resume``), end early (``--stop-after``),
    only report the data (``--data-report-only``), replace a run of the same name (``--overwrite``)."""

    resume: str | None = None
    stop_after: int | None = None
    data_report_only: bool = False
    overwrite: bool = False


# ---------------------------------------------------------------------------------------------------- the command


@click.command("fer-train", cls=FerCommand)
@config_options(TrainConfig)
@click.option("--config", "recipe", default=None, metavar="RECIPE.toml", show_default="none",
              help="options from a recipe file (keys as in config.json, e.g. models/recipes/ferplus.toml; "
              "base = \"other.toml\" starts from another recipe); flags given here override it")  # fmt: skip
@click.option("--resume", default=None, metavar="RUN/last.pt", show_default="none",
              help="continue from RUN/last.pt (its options, unless given here); with --epochs 0 only evaluates")  # fmt: skip
@click.option("--stop-after", type=int, default=None, metavar="N", show_default="none",
              help="end this sitting after N more epochs (resume later)")  # fmt: skip
@click.option("--overwrite", is_flag=True, show_default="off", help="replace an existing run of the same --name")
@click.option("--data-report-only", is_flag=True, show_default="off",
              help="write data_report.json/.md for the data and stop (no run folder)")  # fmt: skip
@version_option("fer-train")
@click.pass_context
def command(ctx: click.Context, recipe: str | None, resume: str | None, stop_after: int | None, overwrite: bool,
            data_report_only: bool, **_options) -> int:  # fmt: skip
    """Train a facial expression classifier on image folders.

    Options come from the defaults, then a resumed run's own (--resume), then a recipe (--config), then the flags typed.
    """
    given = {**(load_recipe(recipe, TrainConfig, "train") if recipe else {}), **given_options(TrainConfig, ctx)}
    return train_command(given, Sitting(resume, stop_after, data_report_only, overwrite))


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a usage or input error or an output that cannot be written (a full disk), 130 interrupted
    by Ctrl-C or SIGTERM alike."""
    return command.main(argv, prog_name=command.name, standalone_mode=False)


def train_command(given: dict, sitting: Sitting) -> int:
    """One sitting from the command line: an error or an interrupt after the first epoch says how to resume."""
    RUN_STATE.clear()
    try:
        with sigterm_as_interrupt():
            resume_state = load_checkpoint(sitting.resume) if sitting.resume else None
            cfg = merged_config(given, saved_config(resume_state))
            check_resumable(resume_state, cfg, sitting)
            train_run(cfg, sitting, resume_state)
        return 0
    except KeyboardInterrupt:
        last = _last_checkpoint()
        if last is not None:
            print(f"fer-train: interrupted; {last} holds the last finished epoch (continue with --resume {last})",
                  file=sys.stderr)  # fmt: skip
        else:
            print("fer-train: interrupted before the first epoch finished; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FerError, OSError) as exc:
        raise _with_resume_hint(exc) from None


def fit(cfg: TrainConfig, resume: str | None = None, stop_after: int | None = None, overwrite: bool = False) -> RunResult:
    """Train as ``fer-train`` does, from a config: what fer-export's distillation and fine-tunes call."""
    sitting = Sitting(resume, stop_after, overwrite=overwrite)
    resume_state = load_checkpoint(resume) if resume else None
    saved = saved_config(resume_state)
    cfg = resolve_config(cfg, saved.data_root if saved else None)
    check_resumable(resume_state, cfg, sitting)
    return train_run(cfg, sitting, resume_state)


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
    return StoppedRun(f"{error}; {last} holds the last finished epoch (continue with --resume {last})", error.exit_code)


def _last_checkpoint() -> Path | None:
    last = RUN_STATE["run_dir"] / "last.pt" if RUN_STATE.get("run_dir") else None
    return last if last is not None and last.exists() else None


# ---------------------------------------------------------------------------------------------------- the options


def saved_config(resume_state: dict | None) -> TrainConfig | None:
    """The config a checkpoint was trained with (its ``train_args``)."""
    return None if resume_state is None else TrainConfig.from_saved(resume_state.get("train_args", {}))


def merged_config(given: dict, saved: TrainConfig | None) -> TrainConfig:
    """The options given (flags over a recipe) over a resumed run's own over the defaults, resolved. The run's data
    root comes after ``FER_DATA_ROOT``."""
    base = saved or TrainConfig()
    return resolve_config(replace(base, **{"data_root": None, **given}), base.data_root)


def resolve_config(cfg: TrainConfig, saved_root: str | None = None) -> TrainConfig:
    """Every option decided: the data root, lr and weight decay by --opt, mean and std by --channels; ranges checked."""
    adamw = cfg.opt == "adamw"
    resolved = replace(
        cfg,
        data_root=resolve_data_root(cfg.data_root, saved_root),
        lr=(1e-3 if adamw else 0.05) if cfg.lr is None else cfg.lr,
        weight_decay=(0.05 if adamw else 5e-4) if cfg.weight_decay is None else cfg.weight_decay,
        mean=[0.5] * cfg.channels if cfg.mean is None else cfg.mean,
        std=[0.5] * cfg.channels if cfg.std is None else cfg.std,
    )
    if resolved.epochs < 0 or resolved.batch_size < 1 or resolved.accum_steps < 1:
        raise OptionError("--epochs must be >= 0, --batch-size and --accum-steps >= 1")
    if resolved.threads < 0:  # the command line's bound, for fit(TrainConfig(...)) callers
        raise OptionError(f"--threads must be 0 (all cores) or more, got {resolved.threads}")
    return resolved


def check_resumable(resume_state: dict | None, cfg: TrainConfig, sitting: Sitting) -> None:
    """best.pt has no optimizer state: it evaluates (--epochs 0) but does not train on."""
    if resume_state is not None and resume_state.get("optimizer") is None:
        start = int(resume_state.get("epoch", 0))
        if end_epoch_of(cfg.epochs, sitting.stop_after, start) > start:
            raise OptionError(f"{sitting.resume} has no optimizer state (best.pt keeps what evaluation and export need): "
                              "resume from the run's last.pt")  # fmt: skip


def end_epoch_of(epochs: int, stop_after: int | None, start_epoch: int) -> int:
    """Where this sitting stops: the last epoch, or earlier with --stop-after."""
    return epochs if stop_after is None else min(epochs, start_epoch + stop_after)


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class Session:
    """Where this process trains: its rank among ``world`` processes, the device and the precision."""

    rank: int
    world: int
    device: torch.device
    amp: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def warn(self, message: str) -> None:
        if self.is_main:
            print(f"fer-train: warning: {message}", file=sys.stderr)


@dataclass
class PreparedData:
    manifest: SplitManifest
    contract: ModelContract
    decoded: dict
    tensors: dict  # split -> (uint8 images, labels) tensors
    report: dict | None


@dataclass
class BuiltModel:
    model: nn.Module
    train_model: nn.Module  # the model, or its DDP wrapper
    ema: ModelEma | None
    contract: ModelContract
    name: str
    kwargs: dict
    pruned: bool

    def for_eval(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class RunResult:
    run_dir: Path | None
    results: dict = field(default_factory=dict)  # val/test metrics of best.pt, best epoch, complete
    history: list = field(default_factory=list)


def train_run(cfg: TrainConfig, sitting: Sitting, resume_state: dict | None) -> RunResult:
    """The stages of a run: session, data, model, run folder, optimisation, epochs, final report."""
    session = start_session(cfg)
    if sitting.data_report_only:
        return report_data_only(cfg, resume_state, session)
    run_dir = _run_dir(cfg, sitting)
    RUN_STATE["run_dir"] = run_dir
    data = prepare_data(cfg, resume_state, session, decode_train=cfg.epochs > 0)
    teachers = load_teachers(cfg, data, session)
    built = build_model(cfg, data, resume_state, session)
    cfg = replace(cfg, arch=built.name)  # the checkpoint and config record the architecture actually trained
    distill = make_distillation(cfg, teachers, data, built.contract, session)
    new_folder = not run_dir.exists()
    try:
        if session.is_main:  # made only now that data and model are known to work: a failed start leaves no folder
            make_run_folder(run_dir, cfg, sitting, data, built, session)
            if teachers and distill is not None and distill.targets is not None:  # targets that travel without the teachers
                save_targets(run_dir / "teacher_targets.npz", distill.targets, data.decoded["train"].images,
                             data.manifest.classes, [t.path for t in teachers], cfg.teacher_tta)  # fmt: skip
        result = train_epochs(cfg, sitting.stop_after, data, built, distill, resume_state, session, run_dir)
        if session.is_main:
            result.results = final_report(run_dir, data, built, session, result)
    except BaseException:
        # a run that fails (a full disk, an interrupt) before its first last.pt leaves no folder: the same command
        # can simply be run again; once last.pt exists the folder stays, to be resumed
        if session.is_main and new_folder and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if session.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def report_data_only(cfg: TrainConfig, resume_state: dict | None, session: Session) -> RunResult:
    """--data-report-only: data_report.json/.md in --out-dir, and no run folder."""
    check_output_dir(cfg.out_dir)
    RUN_STATE["run_dir"] = None
    data = prepare_data(cfg, resume_state, session, decode_train=True)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    written = write_data_report(data.report, Path(cfg.out_dir))
    print(f"fer-train: data report in {', '.join(map(str, written))}")
    return RunResult(None)


def _run_dir(cfg: TrainConfig, sitting: Sitting) -> Path:
    """The run folder, checked before any work: writable, and never an existing run unless --overwrite."""
    if sitting.resume:
        run_dir = Path(sitting.resume).resolve().parent
        check_output_dir(run_dir, "the run folder")
        return run_dir
    check_output_dir(cfg.out_dir)
    name = cfg.name or f"{cfg.arch.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not sitting.overwrite:
            raise OutputError(f"{run_dir} already holds a run: pick another --name, continue it with --resume "
                              f"{run_dir / 'last.pt'}, or replace it with --overwrite")  # fmt: skip
        shutil.rmtree(run_dir)
    return run_dir


def _counts(decoded: dict, num_classes: int) -> dict[str, list[int]]:
    """Images per class of each split as decoded: skipped files are not counted."""
    return {s: np.bincount(d.labels, minlength=num_classes).tolist() for s, d in decoded.items()}


def contiguous(state_dict: dict) -> dict:
    """Tensors in the default (NCHW) layout, so a ``--channels-last`` checkpoint loads like any other."""
    return {k: v.contiguous() for k, v in state_dict.items()}


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda but no CUDA device is available")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def start_session(cfg: TrainConfig) -> Session:
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    session = Session(rank, world, device, resolve_amp(cfg.amp, device))
    if session.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        session.warn("this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast is emulated and about 10x slower "
                     "than fp32 (--amp off)")  # fmt: skip
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return session


def split_manifest(cfg: TrainConfig, resume_state: dict | None, session: Session) -> SplitManifest:
    """The resumed run's own splits, or the data's discovered anew."""
    if resume_state is not None and "manifest" in resume_state:
        return SplitManifest.from_dict(resume_state["manifest"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = discover(cfg.data_root, cfg.protocol, cfg.val_split, cfg.test_split, cfg.seed, cfg.label_mode,
                            exclude=not_classes(cfg))  # fmt: skip
    for w in caught:
        session.warn(str(w.message))
    return manifest


def prepare_data(cfg: TrainConfig, resume_state: dict | None, session: Session, decode_train: bool) -> PreparedData:
    """Splits, decoded images (the training split only when it is trained on, or reported), the base contract, the
    data report."""
    manifest = split_manifest(cfg, resume_state, session)
    contract = ModelContract(
        classes=manifest.classes, input_size=(cfg.input_size, cfg.input_size), channels=cfg.channels,
        mean=cfg.mean, std=cfg.std, crop_margin=cfg.crop_margin,
        provenance={"data_root": manifest.root, "layout": manifest.layout, "protocol": manifest.protocol,
                    "label_mode": manifest.label_mode, "sampler": cfg.sampler},
    )  # fmt: skip
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
                strict=cfg.strict, progress=_tqdm if session.is_main and progress_wanted(cfg.no_progress) else None,
            )  # fmt: skip
        for w in caught:
            session.warn(str(w.message))
    tensors = {s: (torch.from_numpy(np.ascontiguousarray(d.images)), torch.from_numpy(d.labels)) for s, d in decoded.items()}
    report = data_report(manifest, decoded) if session.is_main and resume_state is None else None
    for w in (report or {}).get("warnings", []):
        print(f"fer-train: data: {w}", file=sys.stderr)
    return PreparedData(manifest, contract, decoded, tensors, report)


def not_classes(cfg: TrainConfig) -> dict[Path, str]:
    """Folders that may sit under the data root and are never classes: where runs go, and the decode cache."""
    return {Path(cfg.out_dir): "the --out-dir runs are written to",
            Path(cfg.cache_dir or default_cache_dir()): "the decode cache"}  # fmt: skip


def load_teachers(cfg: TrainConfig, data: PreparedData, session: Session) -> list[LoadedTeacher]:
    """The --teacher models, checked against the data's classes and the student's input."""
    teachers = [load_teacher(p, session.device, cfg.threads) for p in teacher_paths(cfg.teacher)]
    if teachers and cfg.teacher_targets_file:
        raise OptionError("give --teacher or --teacher-targets-file, not both")
    check_teachers(teachers, data.manifest.classes, data.contract.channels, data.contract.input_size)
    cached = cfg.teacher_targets_file or teachers and cfg.teacher_targets == "cached"
    if cached and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise OptionError("stored teacher targets cannot follow mixup/cutmix batches: use --teacher-targets online")
    return teachers


def build_model(cfg: TrainConfig, data: PreparedData, resume_state: dict | None, session: Session) -> BuiltModel:
    """A registry model, a checkpoint's (--init, e.g. a pruned one), or the resumed run's; EMA and DDP around it."""
    from_onnx = bool(cfg.init) and is_onnx_init(cfg.init)
    init_state = load_checkpoint(cfg.init) if cfg.init and not from_onnx else None
    pruned = bool((resume_state or init_state or {}).get("pruned"))
    name, kwargs, contract = cfg.arch, parse_arch_args(cfg.arch_arg), data.contract
    if from_onnx:
        model, init_contract, path = model_from_onnx(cfg.init)
        if list(init_contract.classes) != data.manifest.classes:
            raise CheckpointError(f"--init classes {list(init_contract.classes)} differ from the data's "
                                  f"{data.manifest.classes}")  # fmt: skip
        spec = init_contract.provenance["model"]
        name, kwargs = spec["name"], dict(spec.get("kwargs", {}))
        contract = init_contract.replace(provenance={**contract.provenance, "init": {"file": path.name,
                                                                                     "sha256": file_sha256(path)}})  # fmt: skip
        if resume_state is None and "train" in data.tensors:
            refit_batchnorm(model, data.tensors["train"][0], contract)
    elif init_state is not None:
        model, init_contract = model_from_checkpoint(init_state)
        if list(init_contract.classes) != data.manifest.classes:
            raise CheckpointError(f"--init classes {list(init_contract.classes)} differ from the data's "
                                  f"{data.manifest.classes}")  # fmt: skip
        name, kwargs = init_state["model"]["name"], dict(init_state["model"].get("kwargs", {}))
        contract = init_contract.replace(provenance=contract.provenance)
    else:
        pretrained = None if resume_state else cfg.pretrained
        model = create_model(name, contract.num_classes, contract.channels, pretrained=pretrained, **kwargs)
    if resume_state is not None and pruned:
        fit_modules_to_state_dict(model, resume_state["state_dict"])
    if cfg.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            session.warn("this model has no gradient checkpointing; flag ignored")
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
    if cfg.qat:
        prepare_qat(model)
    model.to(session.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    ema = ModelEma(model, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and resume_state is not None and resume_state.get("ema_state_dict"):
        ema.module.load_state_dict(resume_state["ema_state_dict"])
        ema.updates = int(resume_state.get("ema_updates", 0))
    train_model: nn.Module = model
    if session.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[session.device.index] if session.device.type == "cuda" else None)  # fmt: skip
    if session.is_main:
        print(f"fer-train: {name} {kwargs or ''} {count_parameters(model) / 1e6:.2f}M params | classes "
              f"{data.manifest.classes} | images per class {_counts(data.decoded, len(data.manifest.classes))} | "
              f"device {session.device} x{session.world} amp {session.amp}")  # fmt: skip
    return BuiltModel(model, train_model, ema, contract, name, kwargs, pruned)


def make_run_folder(run_dir: Path, cfg: TrainConfig, sitting: Sitting, data: PreparedData, built: BuiltModel,
                    session: Session) -> None:  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    data.manifest.save(run_dir / "split_manifest.json")
    n_skipped = write_skipped_log(run_dir / "skipped_files.txt", data.decoded)
    if n_skipped:
        print(f"fer-train: {n_skipped} unreadable images skipped, listed in {run_dir / 'skipped_files.txt'}")
    config = {**asdict(cfg), **asdict(sitting)}
    config.update(amp_resolved=session.amp, device_resolved=str(session.device), world_size=session.world,
                  contract=built.contract.to_dict())  # fmt: skip
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    if data.report is not None:
        write_data_report(data.report, run_dir)


def make_optimisation(cfg: TrainConfig, model: nn.Module, ema: ModelEma | None, n_train: int,
                      session: Session) -> Optimisation:  # fmt: skip
    """AdamW or SGD+Nesterov without weight decay on biases and norms, cosine schedule with warmup per step."""
    per_rank = -(-n_train // session.world)
    steps_per_epoch = max(1, -(-per_rank // cfg.batch_size) // cfg.accum_steps) if n_train else 0
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.opt == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    scheduler = cosine_with_warmup(optimizer, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch,
                                   cfg.min_lr_ratio)  # fmt: skip
    scaler = torch.amp.GradScaler("cuda") if session.amp == "fp16" and session.device.type == "cuda" else None
    return Optimisation(optimizer, scheduler, scaler, cfg.accum_steps, cfg.clip_grad, session.amp, ema)


def make_distillation(cfg: TrainConfig, teachers: list, data: PreparedData, contract: ModelContract,
                      session: Session) -> Distillation | None:  # fmt: skip
    """Teachers as part of the loss: called on each batch (online), their targets scored once (cached), or read from
    --teacher-targets-file."""
    if not (teachers or cfg.teacher_targets_file) or "train" not in data.decoded:
        return None
    if cfg.teacher_targets_file:
        targets, who = load_targets(cfg.teacher_targets_file, data.decoded["train"].images, data.manifest.classes)
        if session.is_main:
            print(f"fer-train: distilling from {cfg.teacher_targets_file} ({who})")
        return Distillation(cfg.kd_alpha, cfg.kd_temperature, targets=targets)
    if cfg.teacher_targets == "online":
        return Distillation(cfg.kd_alpha, cfg.kd_temperature, teacher=make_teacher(teachers, contract, session.device,
                                                                                   cfg.teacher_tta))  # fmt: skip
    started = time.perf_counter()
    targets, stored = stored_teacher_targets(teachers, data.decoded["train"].images, session.device, cfg.teacher_tta,
                                             Path(cfg.cache_dir or default_cache_dir()))  # fmt: skip
    if session.is_main:
        agree = (targets.argmax(1) == data.tensors["train"][1]).float().mean().item()
        how = f"read from {stored}" if stored else f"{time.perf_counter() - started:.0f}s"
        print(f"fer-train: {len(teachers)} teacher(s) scored the {len(targets)} training images once (tta "
              f"{cfg.teacher_tta}, {how}); their top class matches the label for {agree:.1%}")  # fmt: skip
    return Distillation(cfg.kd_alpha, cfg.kd_temperature, targets=targets)


def train_batches(cfg: TrainConfig, data: PreparedData, contract: ModelContract) -> TrainBatches | None:
    if "train" not in data.tensors:
        return None
    images, labels = data.tensors["train"]
    soft = data.decoded["train"].targets
    targets = LabelTargets(labels, contract.num_classes, cfg.label_smoothing, None if soft is None else torch.from_numpy(soft),
                           sample=data.manifest.label_mode == "probability", seed=cfg.seed)  # fmt: skip
    aug = AugmentConfig(
        shift=cfg.shift, scale=(cfg.scale_min, cfg.scale_max), rotation=cfg.rotation, hflip=not cfg.no_hflip,
        erasing=cfg.erasing, policy=cfg.policy, mixup=cfg.mixup, cutmix=cfg.cutmix, mix_prob=cfg.mix_prob,
        degrade=cfg.degrade,
    )  # fmt: skip
    return TrainBatches(images, targets, aug, contract, cfg.batch_size)


def make_loss(cfg: TrainConfig, labels: torch.Tensor | None, num_classes: int) -> tuple[nn.Module, torch.Tensor | None]:
    """The loss on soft targets, and per-image sampling weights for a class-balanced sampler."""
    counts = torch.bincount(labels, minlength=num_classes) if labels is not None else None
    weights = class_weights_from_counts(counts) if cfg.loss == "weighted_ce" and counts is not None else None
    loss_fn = SoftTargetLoss(cfg.loss, weights, gamma=cfg.focal_gamma)
    sample_weights = None
    if cfg.sampler != "random" and labels is not None:
        sample_weights = class_weights_from_counts(counts, 1.0 if cfg.sampler == "balanced" else 0.5)[labels].double()
    return loss_fn, sample_weights


@dataclass
class Progress:
    """Where the run stands: epochs done, their history, the best epoch so far and the epochs since it."""

    epoch: int
    history: list
    best: dict
    stale: int = 0

    def record(self, epoch: int, stats: dict, lr: float, val_metrics: dict, monitor: str) -> bool:
        """One more epoch; whether it is the best so far."""
        self.epoch = epoch
        self.history.append({"epoch": epoch, **stats, "lr": lr, "val_loss": val_metrics["loss"],
                             "val_accuracy": val_metrics["accuracy"], "val_macro_f1": val_metrics["macro_f1"]})  # fmt: skip
        improved = val_metrics[monitor] > self.best["value"]
        if improved:
            self.best, self.stale = {"metric": monitor, "value": val_metrics[monitor], "epoch": epoch}, 0
        else:
            self.stale += 1
        return improved


def restore_progress(cfg: TrainConfig, resume_state: dict | None, opt: Optimisation) -> Progress:
    """A new run's start, or the resumed run's epoch, history, best epoch, optimizer, schedule and RNG state."""
    best = {"metric": cfg.monitor, "value": -1.0, "epoch": -1}
    if resume_state is None:
        return Progress(0, [], best)
    start_epoch = int(resume_state.get("epoch", 0))
    best = dict(resume_state.get("best", best))
    for key, obj in (("optimizer", opt.optimizer), ("scheduler", opt.scheduler), ("scaler", opt.scaler)):
        if obj is not None and resume_state.get(key) is not None and cfg.epochs > 0:
            obj.load_state_dict(resume_state[key])
    if resume_state.get("rng_state") is not None:
        torch.set_rng_state(resume_state["rng_state"])
    stale = max(0, start_epoch - best["epoch"]) if best["epoch"] > 0 else 0
    return Progress(start_epoch, list(resume_state.get("history", [])), best, stale)


def train_epochs(cfg: TrainConfig, stop_after: int | None, data: PreparedData, built: BuiltModel,
                 distill: Distillation | None, resume_state: dict | None, session: Session,
                 run_dir: Path | None) -> RunResult:  # fmt: skip
    """The epochs of this sitting: train, validate, keep best.pt and last.pt; resumable exactly."""
    batches = train_batches(cfg, data, built.contract)
    labels = data.tensors["train"][1] if batches is not None else None
    opt = make_optimisation(cfg, built.model, built.ema, 0 if labels is None else len(labels), session)
    loss_fn, sample_weights = make_loss(cfg, labels, built.contract.num_classes)
    loss_fn = loss_fn.to(session.device)
    progress = restore_progress(cfg, resume_state, opt)
    val_images, val_labels = data.tensors["val"]
    end_epoch = end_epoch_of(cfg.epochs, stop_after, progress.epoch)
    complete, planned = end_epoch >= cfg.epochs, cfg.epochs  # not complete when --stop-after ends this sitting early
    if resume_state is not None and cfg.epochs == 0:  # only evaluates: the run is as finished as it was
        complete, planned = was_complete(run_dir, resume_state)
    for epoch in range(progress.epoch, end_epoch):
        order = epoch_indices(len(labels), epoch, cfg.seed, sample_weights, session.rank, session.world)
        batches.targets.set_epoch(epoch)
        bar = _epoch_progress(cfg, epoch, len(batches.split(order))) if session.is_main else None
        stats = train_one_epoch(built.train_model, batches, order, loss_fn, opt, session.device, distill, bar)
        val_metrics, _ = evaluate(built.for_eval(), val_images, val_labels, built.contract, session.device, amp=session.amp)
        improved = progress.record(epoch + 1, stats, opt.optimizer.param_groups[0]["lr"], val_metrics, cfg.monitor)
        if session.is_main:
            save_epoch(run_dir, checkpoint_state(cfg, built, opt, progress, data.manifest, val_metrics), improved)
            print_epoch(cfg, progress.epoch, stats, val_metrics, improved)
            _tensorboard(run_dir, progress.history[-1])
        if cfg.patience and progress.stale >= cfg.patience:
            if session.is_main:
                print(f"fer-train: early stop, no {cfg.monitor} gain for {cfg.patience} epochs")
            complete = True
            break
    return RunResult(run_dir, {"best": progress.best, "complete": complete, "epochs": planned}, progress.history)


def was_complete(run_dir: Path | None, resume_state: dict) -> tuple[bool, int]:
    """Whether a run had finished before an eval-only resume, and its planned epochs: its metrics.json says so when
    written for the same plan (a run extended with a larger --epochs is not finished), else its last epoch does."""
    planned = int(resume_state.get("train_args", {}).get("epochs", 0))
    metrics = run_dir / "metrics.json" if run_dir is not None else None
    if metrics is not None and metrics.is_file():
        saved = json.loads(metrics.read_text())
        if saved.get("epochs") == planned:
            return bool(saved.get("complete", False)), planned
    return int(resume_state.get("epoch", 0)) >= planned, planned


def save_epoch(run_dir: Path, state: dict, improved: bool) -> None:
    """best.pt when the epoch improved, last.pt and history.json always; each file whole or absent."""
    if improved:
        save_checkpoint(weights_only_state(state), run_dir / "best.pt")
    save_checkpoint(state, run_dir / "last.pt")
    atomic_write_text(run_dir / "history.json", json.dumps(state["history"], indent=2))


def print_epoch(cfg: TrainConfig, epoch: int, stats: dict, val_metrics: dict, improved: bool) -> None:
    print(f"epoch {epoch:3d}/{cfg.epochs} | loss {stats['train_loss']:.4f} | val loss {val_metrics['loss']:.4f} "
          f"acc {val_metrics['accuracy']:.4f} F1 {val_metrics['macro_f1']:.4f}{' *' if improved else ''} | "
          f"{stats['samples_per_second']:.0f} img/s (loader {stats['loader_samples_per_second']:.0f} img/s) | "
          f"{stats['train_seconds']:.0f}s", flush=True)  # fmt: skip


# resuming needs these; evaluation, export and --init do not, and the optimizer's moments are twice the weights' size
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng_state")


def weights_only_state(state: dict) -> dict:
    """best.pt: last.pt's state without what only resuming needs (last.pt keeps it)."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


def progress_wanted(no_progress: bool) -> bool:
    """Progress bars only on a terminal: redirected into a log, tqdm's redraws are noise."""
    return not no_progress and sys.stderr.isatty()


def _epoch_progress(cfg: TrainConfig, epoch: int, total: int):
    if not progress_wanted(cfg.no_progress):
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)


def checkpoint_state(cfg: TrainConfig, built: BuiltModel, opt: Optimisation, progress: Progress, manifest: SplitManifest,
                     val_metrics: dict) -> dict:  # fmt: skip
    """Everything needed to rebuild, resume exactly, evaluate or export the run at this epoch."""
    return {
        "model": {"name": built.name, "kwargs": built.kwargs},
        "pruned": built.pruned,
        "state_dict": contiguous(built.model.state_dict()),
        "ema_state_dict": contiguous(built.ema.module.state_dict()) if built.ema is not None else None,
        "ema_updates": built.ema.updates if built.ema is not None else 0,
        "contract": built.contract.to_dict(),
        "train_args": asdict(cfg),
        "epoch": progress.epoch,
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
        "rng_state": torch.get_rng_state(),
        "history": progress.history,
        "best": progress.best,
        "manifest": manifest.to_dict(),
        "val_metrics": val_metrics,
    }


def final_report(run_dir: Path, data: PreparedData, built: BuiltModel, session: Session, result: RunResult) -> dict:
    """best.pt scored on val and test (selection never looked at test); metrics.json/.md and the plots."""
    final_path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else None
    best_model = model_from_checkpoint(load_checkpoint(final_path))[0] if final_path else built.for_eval()
    if is_qat(built.model):
        prepare_qat(best_model)  # scored as it was selected: with the INT8 rounding
    best_model.to(session.device)
    results = {"checkpoint": str(final_path) if final_path else None, **result.results, "notes": data.manifest.notes}
    for split in ("val", "test"):
        if split in data.tensors:
            # in fp32, as fer-eval and fer-export score it and the exported files run: the per-epoch validation in
            # the training precision (bf16 autocast on a CPU with native bf16) differs by a few images
            results[split], _ = evaluate(best_model, *data.tensors[split], built.contract, session.device, amp="off")
    write_reports(run_dir, results, result.history)
    for split in ("val", "test"):
        if split in results:
            print(f"{split}: accuracy {results[split]['accuracy']:.4f} macro-F1 {results[split]['macro_f1']:.4f} "
                  f"({results[split]['num_samples']} images)")  # fmt: skip
    print(f"fer-train: results in {run_dir}")
    return results


def _tqdm(items, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", leave=False, mininterval=1.0)


def write_reports(run_dir: Path, results: dict, history: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.json", json.dumps(results, indent=2))
    lines = [f"# Run {run_dir.name}", ""]
    for split in ("val", "test"):
        if split in results:
            lines += [f"## {split}", "", metrics_table(results[split]), ""]
    atomic_write_text(run_dir / "metrics.md", "\n".join(lines))
    split = "test" if "test" in results else "val"
    plot_confusion_matrix(results[split], run_dir / "confusion_matrix.png", title=f"{split}: accuracy "
                          f"{results[split]['accuracy']:.4f}, macro-F1 {results[split]['macro_f1']:.4f}")  # fmt: skip
    if history:
        plot_curves(history, run_dir / "curves.png", results.get("best", {}).get("metric"))


def _tensorboard(run_dir: Path, record: dict) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])


if __name__ == "__main__":
    sys.exit(main())
