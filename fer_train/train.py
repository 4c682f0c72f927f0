"""fer-train: train an expression classifier on image folders.

Read top to bottom: arguments -> data -> model -> optimizer/schedule -> epochs
(train_one_epoch, evaluate, checkpoint) -> final metrics and plots.
Distributed with ``torchrun --nproc_per_node N -m fer_train ...`` (DDP; rank 0 writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.data import (
    PROTOCOLS,
    DataError,
    SplitManifest,
    default_cache_dir,
    discover,
    load_split,
    resolve_data_root,
    write_skipped_log,
)
from fer_runtime.data.ferplus import LABEL_MODES
from fer_runtime.data.report import data_report, write_data_report
from fer_runtime.outputs import (
    EXIT_INTERRUPTED,
    FerArgumentParser,
    OutputError,
    atomic_write_text,
    check_output_dir,
    check_renamed_flags,
    write_error,
)
from fer_train.augment import AugmentConfig
from fer_train.checkpoint import (
    CheckpointError,
    contract_of,
    fit_modules_to_state_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from fer_train.config import NONE_MEANS, TrainConfig, default_options, upgrade_option_names
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
from fer_train.models import ModelError, count_parameters, create_model, parse_arch_args
from fer_train.teacher import check_teachers, load_teacher, make_teacher, stored_teacher_targets, teacher_paths

RUN_STATE: dict = {}  # the run folder of the run in progress, for the interrupt message

DEFAULTS = default_options()  # TrainConfig: the one source of every option's default


def build_parser() -> argparse.ArgumentParser:
    p = FerArgumentParser("fer-train", description="Train a facial expression classifier on image folders.")
    S = argparse.SUPPRESS  # unset options fall back to the checkpoint (on --resume) or DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=S, help="image folders, fer2013.csv or a FER+ folder (see README); "
                   "env FER_DATA_ROOT")
    g.add_argument("--protocol", default=S, choices=PROTOCOLS,
                   help="fer2013: val=PublicTest, test=PrivateTest; ferplus: FER+ votes, val=FER2013Valid, test=FER2013Test")
    g.add_argument("--label-mode", default=S, choices=LABEL_MODES,
                   help="FER+ training labels (val/test are always majority)")
    g.add_argument("--data-report-only", action="store_true", default=None,
                   help="write data_report.json/.md for the data and stop (no run folder)")
    g.add_argument("--val-split", type=float, default=S, help="fraction carved (stratified, seeded) for validation")
    g.add_argument("--test-split", type=float, default=S, help="fraction carved for test (class-folder layout)")
    g.add_argument("--strict", action="store_true", default=S, help="unreadable images are fatal")
    g.add_argument("--cache-dir", default=S, help="decoded-image cache")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=S, help="architecture: a registered name (vgg, mobile, resnet, simple_cnn) or "
                   "timm:<name>")
    g.add_argument("--arch-arg", action="append", default=S, metavar="KEY=VALUE", help="architecture option, e.g. width=0.5")
    g.add_argument("--pretrained", default=S, help="local weights file ('hub' tries a timm download)")
    g.add_argument("--init", default=S, help="start from a checkpoint's architecture and weights (e.g. a pruned model)")
    g.add_argument("--input-size", type=int, default=S)
    g.add_argument("--channels", type=int, choices=[1, 3], default=S)
    g.add_argument("--mean", type=float, nargs="+", default=S)
    g.add_argument("--std", type=float, nargs="+", default=S)
    g.add_argument("--crop-margin", type=float, default=S, help="face-box margin recorded in the contract")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=S)
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--opt", choices=["adamw", "sgd"], default=S, help="AdamW, or SGD with Nesterov momentum")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--warmup-epochs", type=float, default=S)
    g.add_argument("--min-lr-ratio", type=float, default=S, help="cosine floor as a fraction of --lr")
    g.add_argument("--accum-steps", type=int, default=S, help="gradient accumulation steps")
    g.add_argument("--clip-grad", type=float, default=S)
    g.add_argument("--loss", choices=["ce", "weighted_ce", "focal"], default=S)
    g.add_argument("--focal-gamma", type=float, default=S)
    g.add_argument("--label-smoothing", type=float, default=S)
    g.add_argument("--sampler", choices=["random", "balanced", "sqrt"], default=S, help="class-balanced sampling")
    g = p.add_argument_group("augmentation")
    g.add_argument("--shift", type=float, default=S, help="random translation, fraction of side")
    g.add_argument("--scale-min", type=float, default=S)
    g.add_argument("--scale-max", type=float, default=S)
    g.add_argument("--rotation", type=float, default=S, help="max degrees")
    g.add_argument("--no-hflip", action="store_true", default=S)
    g.add_argument("--erasing", type=float, default=S, help="RandomErasing probability")
    g.add_argument("--policy", choices=["none", "randaugment", "autoaugment"], default=S)
    g.add_argument("--mixup", type=float, default=S, help="mixup alpha (0 off)")
    g.add_argument("--cutmix", type=float, default=S, help="cutmix alpha (0 off)")
    g.add_argument("--mix-prob", type=float, default=S)
    g = p.add_argument_group("run")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=S,
                   help="auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32")
    g.add_argument("--channels-last", action="store_true", default=S,
                   help="NHWC weights; about 10-20%% faster CPU training steps on AVX2 (checkpoints stay NCHW)")
    g.add_argument("--grad-checkpointing", action="store_true", default=S, help="timm models that support it")
    g.add_argument("--ema", type=float, default=S, help="EMA decay of weights, e.g. 0.999 (0 off)")
    g.add_argument("--monitor", choices=["macro_f1", "accuracy"], default=S, help="validation metric for best.pt")
    g.add_argument("--patience", type=int, default=S, help="early stop after N epochs without improvement (0 off)")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--deterministic", action="store_true", default=S)
    g.add_argument("--out-dir", default=S)
    g.add_argument("--name", default=S, help="run folder name; an existing run is refused")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run of the same --name")
    g.add_argument("--config", default=None, metavar="RECIPE.toml",
                   help="options from a recipe file (keys as in config.json, e.g. models/recipes/ferplus.toml); "
                   "flags given here override it")
    g.add_argument("--resume", default=None, help="continue from RUN/last.pt; with --epochs 0 only evaluates")
    g.add_argument("--stop-after", type=int, default=None, help="end this sitting after N more epochs (resume later)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=S)
    g.add_argument("--threads", type=int, default=S, help="CPU threads for torch (0: all cores, torch's own default)")
    g.add_argument("--no-progress", action="store_true", default=S)
    g = p.add_argument_group("distillation (used by fer-export)")
    g.add_argument("--teacher", nargs="+", default=S, metavar="MODEL",
                   help="teacher checkpoint(s) (.pt) or exported model(s) (.onnx) for knowledge distillation; "
                   "several are averaged (mean probability)")
    g.add_argument("--teacher-tta", choices=["none", "flip"], default=S,
                   help="average each teacher over the batch and its mirror image")
    g.add_argument("--teacher-targets", choices=["online", "cached"], default=S,
                   help="online: teachers score every augmented batch; cached: they score the un-augmented training "
                   "images once (no per-step cost; not with mixup/cutmix)")
    g.add_argument("--kd-alpha", type=float, default=S, help="weight of the KD term")
    g.add_argument("--kd-temperature", type=float, default=S)
    _show_defaults(p)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Options default to SUPPRESS (so a resumed run or a recipe can fill what was not given); say the real default."""
    for action in parser._actions:
        if action.dest not in DEFAULTS or action.help == argparse.SUPPRESS:
            continue
        value = DEFAULTS[action.dest]
        if value is None:
            shown = NONE_MEANS.get(action.dest, "none")
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        else:
            shown = value if value != [] else "none"
        action.help = f"{action.help or ''} (default: {shown})".replace("%", "%%").strip()


def resolve_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict | None]:
    """The command line (and its --config recipe) -> the run's options and, with --resume, the checkpoint."""
    ns = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if k not in ("resume", "stop_after", "data_report_only", "config", "overwrite")}
    recipe = load_recipe(ns.config) if ns.config else {}
    return resolve_options({**recipe, **given}, ns.resume, ns.stop_after, bool(ns.overwrite), bool(ns.data_report_only))


def resolve_options(given: dict, resume: str | None = None, stop_after: int | None = None, overwrite: bool = False,
                    data_report_only: bool = False) -> tuple[argparse.Namespace, dict | None]:  # fmt: skip
    """Options given (flags, a recipe or a TrainConfig) over a resumed run's own over the defaults, then the derived ones."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise DataError(f"unknown fer-train option(s): {', '.join(unknown)}")
    resume_state = load_checkpoint(resume) if resume else None
    saved = upgrade_option_names((resume_state or {}).get("train_args", {}))
    saved = {k: v for k, v in saved.items() if k in DEFAULTS}  # retired ones drop out
    merged = {**DEFAULTS, **saved, **given}
    merged.update(resume=resume, stop_after=stop_after, data_report_only=data_report_only, overwrite=overwrite)
    merged["data_root"] = resolve_data_root(given.get("data_root"), merged["data_root"])
    if merged["lr"] is None:
        merged["lr"] = 1e-3 if merged["opt"] == "adamw" else 0.05
    if merged["weight_decay"] is None:
        merged["weight_decay"] = 0.05 if merged["opt"] == "adamw" else 5e-4
    if merged["mean"] is None:
        merged["mean"] = [0.5] * merged["channels"]
    if merged["std"] is None:
        merged["std"] = [0.5] * merged["channels"]
    if merged["epochs"] < 0 or merged["batch_size"] < 1 or merged["accum_steps"] < 1:
        raise DataError("--epochs must be >= 0, --batch-size and --accum-steps >= 1")
    if merged["threads"] < 0:
        raise DataError(f"--threads must be 0 (all cores) or more, got {merged['threads']}")
    args = argparse.Namespace(**merged)
    if resume_state is not None and resume_state.get("optimizer") is None:
        start = int(resume_state.get("epoch", 0))
        if end_epoch_of(args, start) > start:
            raise DataError(f"{resume} has no optimizer state (best.pt keeps what evaluation and export need): resume "
                            "from the run's last.pt")  # fmt: skip
    return args, resume_state


def load_recipe(path: str | Path) -> dict:
    """A recipe file: a TOML table of fer-train options, named as in ``config.json`` (``arch_arg = ["width=0.5"]``)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path} is not valid TOML: {exc}") from None
    options = upgrade_option_names(data.get("train", data))
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(f"{path}: unknown fer-train option(s) {', '.join(unknown)} (known: see config.json of a run)")
    return options


def _counts(decoded: dict, num_classes: int) -> dict[str, list[int]]:
    """Images per class of each split as decoded: skipped files are not counted."""
    return {s: np.bincount(d.labels, minlength=num_classes).tolist() for s, d in decoded.items()}


def _run_dir(args: argparse.Namespace) -> Path:
    """The run folder, checked before any work: writable, and never an existing run unless --overwrite."""
    if args.resume:
        run_dir = Path(args.resume).resolve().parent
        check_output_dir(run_dir, "the run folder")
        return run_dir
    check_output_dir(args.out_dir)
    name = args.name or f"{args.arch.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.overwrite:
            raise OutputError(f"{run_dir} already holds a run: pick another --name, continue it with --resume "
                              f"{run_dir / 'last.pt'}, or replace it with --overwrite")  # fmt: skip
        shutil.rmtree(run_dir)
    return run_dir


def contiguous(state_dict: dict) -> dict:
    """Tensors in the default (NCHW) layout, so a ``--channels-last`` checkpoint loads like any other."""
    return {k: v.contiguous() for k, v in state_dict.items()}


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_arg != "cpu"
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda but no CUDA device is available")
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


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a usage or input error or an output that cannot be written (a full disk), 130 interrupted
    by Ctrl-C or SIGTERM alike."""
    previous = _sigterm_as_interrupt()
    RUN_STATE.clear()
    try:
        check_renamed_flags("fer-train", argv)
        args, resume_state = resolve_args(argv)
        fit_options(args, resume_state)
        return 0
    except (DataError, ModelError, CheckpointError, ContractError, OutputError, ValueError, FileNotFoundError) as exc:
        print(f"fer-train: error: {exc}{_resume_hint()}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fer-train: error: {write_error(exc)}{_resume_hint()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        last = _last_checkpoint()
        if last is not None:
            print(f"fer-train: interrupted; {last} holds the last finished epoch (continue with --resume {last})",
                  file=sys.stderr)  # fmt: skip
        else:
            print("fer-train: interrupted before the first epoch finished; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop, ``kill``) ends the run like Ctrl-C: the same message and exit code 130."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _last_checkpoint() -> Path | None:
    last = RUN_STATE["run_dir"] / "last.pt" if RUN_STATE.get("run_dir") else None
    return last if last is not None and last.exists() else None


def _resume_hint() -> str:
    last = _last_checkpoint()
    return f"; {last} holds the last finished epoch (continue with --resume {last})" if last is not None else ""


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


def fit(cfg: TrainConfig, resume: str | None = None, stop_after: int | None = None, overwrite: bool = False) -> RunResult:
    """Train as ``fer-train`` does, from a config: what fer-export's distillation and fine-tunes call."""
    args, resume_state = resolve_options(asdict(cfg), resume, stop_after, overwrite)
    return fit_options(args, resume_state)


def fit_options(args: argparse.Namespace, resume_state: dict | None) -> RunResult:
    """The stages of a run: session, data, model, run folder, optimisation, epochs, final report."""
    session = start_session(args)
    if args.data_report_only:
        check_output_dir(args.out_dir)
    run_dir = None if args.data_report_only else _run_dir(args)
    RUN_STATE["run_dir"] = run_dir
    data = prepare_data(args, resume_state, session)
    if args.data_report_only:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        written = write_data_report(data.report, Path(args.out_dir))
        print(f"fer-train: data report in {', '.join(map(str, written))}")
        return RunResult(None)
    teachers = [load_teacher(p, session.device, args.threads) for p in teacher_paths(args.teacher)]
    check_teachers(teachers, data.manifest.classes, data.contract.channels, data.contract.input_size)
    if teachers and args.teacher_targets == "cached" and (args.mixup > 0 or args.cutmix > 0):
        raise DataError("--teacher-targets cached cannot follow mixup/cutmix batches: use --teacher-targets online")
    built = build_model(args, data, resume_state, session)
    new_folder = not run_dir.exists()
    try:
        if session.is_main:  # made only now that data and model are known to work: a failed start leaves no folder
            make_run_folder(run_dir, args, data, built, session)
        result = train_epochs(args, data, built, teachers, resume_state, session, run_dir)
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


def start_session(args: argparse.Namespace) -> Session:
    rank, world, device = setup_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    session = Session(rank, world, device, resolve_amp(args.amp, device))
    if session.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        session.warn("this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast is emulated and about 10x slower "
                     "than fp32 (--amp off)")  # fmt: skip
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return session


def prepare_data(args: argparse.Namespace, resume_state: dict | None, session: Session) -> PreparedData:
    """Splits (the resumed run's own manifest, or discovered), decoded images, the base contract, the data report."""
    if resume_state is not None and "manifest" in resume_state:
        manifest = SplitManifest.from_dict(resume_state["manifest"])
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = discover(args.data_root, args.protocol, args.val_split, args.test_split, args.seed, args.label_mode,
                                exclude=not_classes(args))
        for w in caught:
            session.warn(str(w.message))
    contract = ModelContract(
        classes=manifest.classes, input_size=(args.input_size, args.input_size), channels=args.channels,
        mean=args.mean, std=args.std, crop_margin=args.crop_margin,
        provenance={"data_root": manifest.root, "layout": manifest.layout, "protocol": manifest.protocol,
                    "label_mode": manifest.label_mode, "sampler": args.sampler},
    )  # fmt: skip
    if resume_state is not None and list(contract_of(resume_state).classes) != manifest.classes:
        raise CheckpointError("the checkpoint's classes differ from the data's class folders")
    decoded = {}
    for split in manifest.splits:
        if args.epochs == 0 and split == "train" and not args.data_report_only:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decoded[split] = load_split(
                manifest, split, contract.channels, contract.input_size, root=args.data_root, cache_dir=args.cache_dir,
                strict=args.strict, progress=_tqdm if session.is_main and progress_wanted(args.no_progress) else None,
            )  # fmt: skip
        for w in caught:
            session.warn(str(w.message))
    tensors = {s: (torch.from_numpy(np.ascontiguousarray(d.images)), torch.from_numpy(d.labels)) for s, d in decoded.items()}
    report = data_report(manifest, decoded) if session.is_main and resume_state is None else None
    for w in (report or {}).get("warnings", []):
        print(f"fer-train: data: {w}", file=sys.stderr)
    return PreparedData(manifest, contract, decoded, tensors, report)


def not_classes(args: argparse.Namespace) -> dict[Path, str]:
    """Folders that may sit under the data root and are never classes: where runs go, and the decode cache."""
    return {Path(args.out_dir): "the --out-dir runs are written to",
            Path(args.cache_dir or default_cache_dir()): "the decode cache"}  # fmt: skip


def build_model(args: argparse.Namespace, data: PreparedData, resume_state: dict | None, session: Session) -> BuiltModel:
    """A registry model, a checkpoint's (--init, e.g. a pruned one), or the resumed run's; EMA and DDP around it."""
    init_state = load_checkpoint(args.init) if args.init else None
    pruned = bool((resume_state or init_state or {}).get("pruned"))
    name, kwargs, contract = args.arch, parse_arch_args(args.arch_arg), data.contract
    if init_state is not None:
        model, init_contract = model_from_checkpoint(init_state)
        if list(init_contract.classes) != data.manifest.classes:
            raise CheckpointError(f"--init classes {list(init_contract.classes)} differ from the data's "
                                  f"{data.manifest.classes}")  # fmt: skip
        name, kwargs = init_state["model"]["name"], dict(init_state["model"].get("kwargs", {}))
        contract = init_contract.replace(provenance=contract.provenance)
    else:
        pretrained = None if resume_state else args.pretrained
        model = create_model(name, contract.num_classes, contract.channels, pretrained=pretrained, **kwargs)
    if resume_state is not None and pruned:
        fit_modules_to_state_dict(model, resume_state["state_dict"])
    if args.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            session.warn("this model has no gradient checkpointing; flag ignored")
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
    model.to(session.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    ema = ModelEma(model, args.ema) if args.ema > 0 else None
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
    args.arch = name  # the checkpoint and config record the architecture actually trained
    return BuiltModel(model, train_model, ema, contract, name, kwargs, pruned)


def make_run_folder(run_dir: Path, args: argparse.Namespace, data: PreparedData, built: BuiltModel, session: Session) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data.manifest.save(run_dir / "split_manifest.json")
    n_skipped = write_skipped_log(run_dir / "skipped_files.txt", data.decoded)
    if n_skipped:
        print(f"fer-train: {n_skipped} unreadable images skipped, listed in {run_dir / 'skipped_files.txt'}")
    config = dict(vars(args))
    config.update(amp_resolved=session.amp, device=str(session.device), world_size=session.world,
                  contract=built.contract.to_dict())  # fmt: skip
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    if data.report is not None:
        write_data_report(data.report, run_dir)


def make_optimisation(args: argparse.Namespace, model: nn.Module, ema: ModelEma | None, n_train: int,
                      session: Session) -> Optimisation:  # fmt: skip
    """AdamW or SGD+Nesterov without weight decay on biases and norms, cosine schedule with warmup per step."""
    per_rank = -(-n_train // session.world)
    steps_per_epoch = max(1, -(-per_rank // args.batch_size) // args.accum_steps) if n_train else 0
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    scheduler = cosine_with_warmup(optimizer, int(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch,
                                   args.min_lr_ratio)  # fmt: skip
    scaler = torch.amp.GradScaler("cuda") if session.amp == "fp16" and session.device.type == "cuda" else None
    return Optimisation(optimizer, scheduler, scaler, args.accum_steps, args.clip_grad, session.amp, ema)


def make_distillation(args: argparse.Namespace, teachers: list, data: PreparedData, contract: ModelContract,
                      session: Session) -> Distillation | None:  # fmt: skip
    """Teachers as part of the loss: called on each batch (online), or their targets scored once (cached)."""
    if not teachers or "train" not in data.decoded:
        return None
    if args.teacher_targets == "online":
        return Distillation(args.kd_alpha, args.kd_temperature, teacher=make_teacher(teachers, contract, session.device,
                                                                                     args.teacher_tta))  # fmt: skip
    started = time.perf_counter()
    targets, stored = stored_teacher_targets(teachers, data.decoded["train"].images, session.device, args.teacher_tta,
                                             Path(args.cache_dir or default_cache_dir()))  # fmt: skip
    if session.is_main:
        agree = (targets.argmax(1) == data.tensors["train"][1]).float().mean().item()
        how = f"read from {stored}" if stored else f"{time.perf_counter() - started:.0f}s"
        print(f"fer-train: {len(teachers)} teacher(s) scored the {len(targets)} training images once (tta "
              f"{args.teacher_tta}, {how}); their top class matches the label for {agree:.1%}")  # fmt: skip
    return Distillation(args.kd_alpha, args.kd_temperature, targets=targets)


def train_batches(args: argparse.Namespace, data: PreparedData, contract: ModelContract) -> TrainBatches | None:
    if "train" not in data.tensors:
        return None
    images, labels = data.tensors["train"]
    soft = data.decoded["train"].targets
    targets = LabelTargets(labels, contract.num_classes, args.label_smoothing, None if soft is None else torch.from_numpy(soft),
                           sample=data.manifest.label_mode == "probability", seed=args.seed)  # fmt: skip
    aug = AugmentConfig(
        shift=args.shift, scale=(args.scale_min, args.scale_max), rotation=args.rotation, hflip=not args.no_hflip,
        erasing=args.erasing, policy=args.policy, mixup=args.mixup, cutmix=args.cutmix, mix_prob=args.mix_prob,
    )  # fmt: skip
    return TrainBatches(images, targets, aug, contract, args.batch_size)


def make_loss(args: argparse.Namespace, labels: torch.Tensor | None, num_classes: int) -> tuple[nn.Module, torch.Tensor | None]:
    """The loss on soft targets, and per-image sampling weights for a class-balanced sampler."""
    counts = torch.bincount(labels, minlength=num_classes) if labels is not None else None
    weights = class_weights_from_counts(counts) if args.loss == "weighted_ce" and counts is not None else None
    loss_fn = SoftTargetLoss(args.loss, weights, gamma=args.focal_gamma)
    sample_weights = None
    if args.sampler != "random" and labels is not None:
        sample_weights = class_weights_from_counts(counts, 1.0 if args.sampler == "balanced" else 0.5)[labels].double()
    return loss_fn, sample_weights


def train_epochs(args, data: PreparedData, built: BuiltModel, teachers: list, resume_state: dict | None,
                 session: Session, run_dir: Path | None) -> RunResult:  # fmt: skip
    """The epochs of this sitting: train, validate, keep best.pt and last.pt; resumable exactly."""
    batches = train_batches(args, data, built.contract)
    labels = data.tensors["train"][1] if batches is not None else None
    opt = make_optimisation(args, built.model, built.ema, 0 if labels is None else len(labels), session)
    loss_fn, sample_weights = make_loss(args, labels, built.contract.num_classes)
    loss_fn = loss_fn.to(session.device)
    distill = make_distillation(args, teachers, data, built.contract, session)
    start_epoch, history, best = 0, [], {"metric": args.monitor, "value": -1.0, "epoch": -1}
    if resume_state is not None:
        start_epoch = int(resume_state.get("epoch", 0))
        history = list(resume_state.get("history", []))
        best = dict(resume_state.get("best", best))
        for key, obj in (("optimizer", opt.optimizer), ("scheduler", opt.scheduler), ("scaler", opt.scaler)):
            if obj is not None and resume_state.get(key) is not None and args.epochs > 0:
                obj.load_state_dict(resume_state[key])
        if resume_state.get("rng_state") is not None:
            torch.set_rng_state(resume_state["rng_state"])
    val_images, val_labels = data.tensors["val"]
    stale = max(0, start_epoch - best["epoch"]) if best["epoch"] > 0 else 0
    end_epoch = end_epoch_of(args, start_epoch)
    complete = end_epoch >= args.epochs  # False when --stop-after ends this sitting early
    for epoch in range(start_epoch, end_epoch):
        order = epoch_indices(len(labels), epoch, args.seed, sample_weights, session.rank, session.world)
        batches.targets.set_epoch(epoch)
        progress = _epoch_progress(args, epoch, len(batches.split(order))) if session.is_main else None
        stats = train_one_epoch(built.train_model, batches, order, loss_fn, opt, session.device, distill, progress)
        val_metrics, _ = evaluate(built.for_eval(), val_images, val_labels, built.contract, session.device, amp=session.amp)
        history.append({"epoch": epoch + 1, **stats, "lr": opt.optimizer.param_groups[0]["lr"], "val_loss": val_metrics["loss"],
                        "val_accuracy": val_metrics["accuracy"], "val_macro_f1": val_metrics["macro_f1"]})  # fmt: skip
        improved = val_metrics[args.monitor] > best["value"]
        if improved:
            best, stale = {"metric": args.monitor, "value": val_metrics[args.monitor], "epoch": epoch + 1}, 0
        else:
            stale += 1
        if session.is_main:
            state = checkpoint_state(args, built, opt, epoch + 1, history, best, data.manifest, val_metrics)
            if improved:
                save_checkpoint(weights_only_state(state), run_dir / "best.pt")
            save_checkpoint(state, run_dir / "last.pt")
            atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2))
            print(f"epoch {epoch + 1:3d}/{args.epochs} | loss {stats['train_loss']:.4f} | val loss {val_metrics['loss']:.4f} "
                  f"acc {val_metrics['accuracy']:.4f} F1 {val_metrics['macro_f1']:.4f}{' *' if improved else ''} | "
                  f"{stats['samples_per_second']:.0f} img/s (loader {stats['loader_samples_per_second']:.0f} img/s) | "
                  f"{stats['train_seconds']:.0f}s", flush=True)  # fmt: skip
            _tensorboard(run_dir, history[-1])
        if args.patience and stale >= args.patience:
            if session.is_main:
                print(f"fer-train: early stop, no {args.monitor} gain for {args.patience} epochs")
            complete = True
            break
    return RunResult(run_dir, {"best": best, "complete": complete}, history)


def end_epoch_of(args: argparse.Namespace, start_epoch: int) -> int:
    """Where this sitting stops: the last epoch, or earlier with --stop-after."""
    return args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)


# resuming needs these; evaluation, export and --init do not, and the optimizer's moments are twice the weights' size
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng_state")


def weights_only_state(state: dict) -> dict:
    """best.pt: last.pt's state without what only resuming needs (last.pt keeps it)."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


def progress_wanted(no_progress: bool) -> bool:
    """Progress bars only on a terminal: redirected into a log, tqdm's redraws are noise."""
    return not no_progress and sys.stderr.isatty()


def _epoch_progress(args: argparse.Namespace, epoch: int, total: int):
    if not progress_wanted(args.no_progress):
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)


def checkpoint_state(args, built: BuiltModel, opt: Optimisation, epoch: int, history: list, best: dict,
                     manifest: SplitManifest, val_metrics: dict) -> dict:  # fmt: skip
    """Everything needed to rebuild, resume exactly, evaluate or export the run at this epoch."""
    return {
        "model": {"name": built.name, "kwargs": built.kwargs},
        "pruned": built.pruned,
        "state_dict": contiguous(built.model.state_dict()),
        "ema_state_dict": contiguous(built.ema.module.state_dict()) if built.ema is not None else None,
        "ema_updates": built.ema.updates if built.ema is not None else 0,
        "contract": built.contract.to_dict(),
        "train_args": {k: v for k, v in vars(args).items() if k in DEFAULTS},
        "epoch": epoch,
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
        "rng_state": torch.get_rng_state(),
        "history": history,
        "best": best,
        "manifest": manifest.to_dict(),
        "val_metrics": val_metrics,
    }


def final_report(run_dir: Path, data: PreparedData, built: BuiltModel, session: Session, result: RunResult) -> dict:
    """best.pt scored on val and test (selection never looked at test); metrics.json/.md and the plots."""
    final_path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else None
    best_model = model_from_checkpoint(load_checkpoint(final_path))[0] if final_path else built.for_eval()
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
