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
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.data import (
    PROTOCOLS,
    DataError,
    SplitManifest,
    atomic_write_text,
    discover,
    load_split,
    resolve_data_root,
    write_skipped_log,
)
from fer_runtime.data_report import data_report, write_data_report
from fer_runtime.ferplus import LABEL_MODES
from fer_runtime.outputs import EXIT_INTERRUPTED, OutputError, check_output_dir
from fer_train.augment import AugmentConfig
from fer_train.checkpoint import CheckpointError, contract_of, load_checkpoint, save_checkpoint
from fer_train.config import NONE_MEANS, default_options
from fer_train.engine import (
    LabelTargets,
    ModelEma,
    cpu_has_native_bf16,
    epoch_indices,
    evaluate,
    resolve_amp,
    train_one_epoch,
)
from fer_train.losses import SoftTargetLoss, class_weights_from_counts
from fer_train.metrics import metrics_table, plot_confusion_matrix, plot_curves
from fer_train.models import ModelError, count_parameters, create_model
from fer_train.teacher import check_teachers, load_teacher, make_teacher, teacher_paths, teacher_targets

RUN_STATE: dict = {}  # the run folder of the run in progress, for the interrupt message

DEFAULTS = default_options()  # TrainConfig: the one source of every option's default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("fer-train", description="Train a facial expression classifier on image folders.")
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
    g.add_argument("--model", default=S, help="registered name (vgg, mobile, resnet, simple_cnn) or timm:<name>")
    g.add_argument("--model-arg", action="append", default=S, metavar="KEY=VALUE", help="model option, e.g. width=0.5")
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
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads (0: torch default)")
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
    ns = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if k not in ("resume", "stop_after", "data_report_only", "config", "overwrite")}
    recipe = load_recipe(ns.config) if ns.config else {}
    resume_state = None
    if ns.resume:
        resume_state = load_checkpoint(ns.resume)
        saved = {k: v for k, v in resume_state.get("train_args", {}).items() if k in DEFAULTS}  # retired options drop out
        merged = {**DEFAULTS, **saved, **recipe, **given}
    else:
        merged = {**DEFAULTS, **recipe, **given}
    merged["resume"] = ns.resume
    merged["stop_after"] = ns.stop_after
    merged["data_report_only"] = bool(ns.data_report_only)
    merged["overwrite"] = bool(ns.overwrite)
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
    return argparse.Namespace(**merged), resume_state


def load_recipe(path: str | Path) -> dict:
    """A recipe file: a TOML table of fer-train options, named as in ``config.json`` (``model_arg = ["width=0.5"]``)."""
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
    options = data.get("train", data)
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
    name = args.name or f"{args.model.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
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


def parse_model_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ModelError(f"--model-arg needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


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
    try:
        return run(argv)
    except (DataError, ModelError, CheckpointError, ContractError, OutputError, ValueError, FileNotFoundError) as exc:
        print(f"fer-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        last = RUN_STATE["run_dir"] / "last.pt" if RUN_STATE.get("run_dir") else None
        if last is not None and last.exists():
            print(f"fer-train: interrupted; {last} holds the last finished epoch (continue with --resume {last})",
                  file=sys.stderr)  # fmt: skip
        else:
            print("fer-train: interrupted before the first epoch finished; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(argv: list[str] | None = None) -> int:
    args, resume_state = resolve_args(argv)
    rank, world, device = setup_distributed(args.device)
    is_main = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = resolve_amp(args.amp, device)
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16() and is_main:
        print("fer-train: warning: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast is emulated and "
              "about 10x slower than fp32 (--amp off)", file=sys.stderr)  # fmt: skip
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model_kwargs = parse_model_args(args.model_arg)
    if args.data_report_only:
        check_output_dir(args.out_dir)
        run_dir = None
    else:
        run_dir = _run_dir(args)
    RUN_STATE["run_dir"] = run_dir

    # ---- data
    if resume_state is not None and "manifest" in resume_state:
        manifest = SplitManifest.from_dict(resume_state["manifest"])
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = discover(args.data_root, args.protocol, args.val_split, args.test_split, args.seed, args.label_mode)
        if is_main:
            for w in caught:
                print(f"fer-train: warning: {w.message}", file=sys.stderr)
    contract = ModelContract(
        classes=manifest.classes, input_size=(args.input_size, args.input_size), channels=args.channels,
        mean=args.mean, std=args.std, crop_margin=args.crop_margin,
        provenance={"data_root": manifest.root, "layout": manifest.layout, "protocol": manifest.protocol,
                    "label_mode": manifest.label_mode},
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
                manifest, split, contract.channels, contract.input_size, root=args.data_root,
                cache_dir=args.cache_dir, strict=args.strict, progress=_tqdm if is_main and not args.no_progress else None,
            )  # fmt: skip
        if is_main:
            for w in caught:
                print(f"fer-train: warning: {w.message}", file=sys.stderr)
    teachers = [load_teacher(p, device, args.threads) for p in teacher_paths(args.teacher)]
    check_teachers(teachers, manifest.classes, contract.channels, contract.input_size)
    if teachers and args.teacher_targets == "cached" and (args.mixup > 0 or args.cutmix > 0):
        raise DataError("--teacher-targets cached cannot follow mixup/cutmix batches: use --teacher-targets online")
    tensors = {s: (torch.from_numpy(np.ascontiguousarray(d.images)), torch.from_numpy(d.labels)) for s, d in decoded.items()}
    report = data_report(manifest, decoded) if is_main and resume_state is None else None
    if report is not None:
        for w in report["warnings"]:
            print(f"fer-train: data: {w}", file=sys.stderr)
    if args.data_report_only:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = write_data_report(report, out)
        print(f"fer-train: data report in {', '.join(map(str, written))}")
        return 0

    # ---- model
    init_state = load_checkpoint(args.init) if args.init else None
    pruned = bool((resume_state or init_state or {}).get("pruned"))
    if init_state is not None:
        from fer_train.checkpoint import model_from_checkpoint

        model, init_contract = model_from_checkpoint(init_state)
        if list(init_contract.classes) != manifest.classes:
            raise CheckpointError(f"--init classes {list(init_contract.classes)} differ from the data's {manifest.classes}")
        args.model, model_kwargs = init_state["model"]["name"], dict(init_state["model"].get("kwargs", {}))
        contract = init_contract.replace(provenance=contract.provenance)
    else:
        pretrained = None if resume_state else args.pretrained
        model = create_model(args.model, contract.num_classes, contract.channels, pretrained=pretrained, **model_kwargs)
    if resume_state is not None and pruned:
        from fer_train.checkpoint import fit_modules_to_state_dict

        fit_modules_to_state_dict(model, resume_state["state_dict"])
    if args.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        elif is_main:
            print("fer-train: warning: this model has no gradient checkpointing; flag ignored", file=sys.stderr)
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    ema = ModelEma(model, args.ema) if args.ema > 0 else None
    if ema is not None and resume_state is not None and resume_state.get("ema_state_dict"):
        ema.module.load_state_dict(resume_state["ema_state_dict"])
        ema.updates = int(resume_state.get("ema_updates", 0))
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if is_main:
        print(f"fer-train: {args.model} {model_kwargs or ''} {count_parameters(model) / 1e6:.2f}M params | "
              f"classes {manifest.classes} | images per class {_counts(decoded, len(manifest.classes))} | "
              f"device {device} x{world} amp {amp}")  # fmt: skip

    # ---- run folder
    # made only now that data and model are known to work: a run that fails at start leaves no folder
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest.save(run_dir / "split_manifest.json")
        n_skipped = write_skipped_log(run_dir / "skipped_files.txt", decoded)
        if n_skipped:
            print(f"fer-train: {n_skipped} unreadable images skipped, listed in {run_dir / 'skipped_files.txt'}")
        config = {k: v for k, v in vars(args).items()}
        config.update(amp_resolved=amp, device=str(device), world_size=world, contract=contract.to_dict())
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
        if report is not None:
            write_data_report(report, run_dir)

    # ---- optimisation
    train_images, train_labels = tensors.get("train", (None, None))
    train_targets = None
    if train_labels is not None:
        soft = decoded["train"].targets
        train_targets = LabelTargets(train_labels, contract.num_classes, args.label_smoothing,
                                     None if soft is None else torch.from_numpy(soft),
                                     sample=manifest.label_mode == "probability", seed=args.seed)  # fmt: skip
    steps_per_epoch = 0
    if train_labels is not None:
        per_rank = -(-len(train_labels) // world)
        steps_per_epoch = max(1, -(-per_rank // args.batch_size) // args.accum_steps)
    decay, no_decay = [], []
    for p_ in model.parameters():
        (no_decay if p_.ndim <= 1 else decay).append(p_)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    scheduler = cosine_with_warmup(
        optimizer, int(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch, args.min_lr_ratio
    )
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
    counts = torch.bincount(train_labels, minlength=contract.num_classes) if train_labels is not None else None
    loss_fn = SoftTargetLoss(
        args.loss, class_weights_from_counts(counts) if args.loss == "weighted_ce" and counts is not None else None,
        gamma=args.focal_gamma,
    ).to(device)
    sample_weights = None
    if args.sampler != "random" and train_labels is not None:
        power = 1.0 if args.sampler == "balanced" else 0.5
        sample_weights = class_weights_from_counts(counts, power)[train_labels].double()
    aug = AugmentConfig(
        shift=args.shift, scale=(args.scale_min, args.scale_max), rotation=args.rotation, hflip=not args.no_hflip,
        erasing=args.erasing, policy=args.policy, mixup=args.mixup, cutmix=args.cutmix, mix_prob=args.mix_prob,
    )  # fmt: skip
    teacher, cached_targets = None, None
    if teachers and args.teacher_targets == "cached" and train_labels is not None:
        started = time.perf_counter()
        cached_targets = teacher_targets(teachers, decoded["train"].images, device, args.teacher_tta)
        if is_main:
            agree = (cached_targets.argmax(1) == train_labels).float().mean().item()
            print(f"fer-train: {len(teachers)} teacher(s) scored the {len(cached_targets)} training images once "
                  f"(tta {args.teacher_tta}, {time.perf_counter() - started:.0f}s); their top class matches the "
                  f"label for {agree:.1%}")  # fmt: skip
    elif teachers:
        teacher = make_teacher(teachers, contract, device, args.teacher_tta)

    start_epoch, history, best = 0, [], {"metric": args.monitor, "value": -1.0, "epoch": -1}
    if resume_state is not None:
        start_epoch = int(resume_state.get("epoch", 0))
        history = list(resume_state.get("history", []))
        best = dict(resume_state.get("best", best))
        for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None and resume_state.get(key) is not None and args.epochs > 0:
                obj.load_state_dict(resume_state[key])
        if resume_state.get("rng_state") is not None:
            torch.set_rng_state(resume_state["rng_state"])

    def checkpoint_state(epoch: int, val_metrics: dict) -> dict:
        return {
            "model": {"name": args.model, "kwargs": model_kwargs},
            "pruned": pruned,
            "state_dict": contiguous(model.state_dict()),
            "ema_state_dict": contiguous(ema.module.state_dict()) if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "contract": contract.to_dict(),
            "train_args": {k: v for k, v in vars(args).items() if k in DEFAULTS},
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng_state": torch.get_rng_state(),
            "history": history,
            "best": best,
            "manifest": manifest.to_dict(),
            "val_metrics": val_metrics,
        }

    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731
    val_images, val_labels = tensors["val"]
    stale = max(0, start_epoch - best["epoch"]) if best["epoch"] > 0 else 0
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    complete = end_epoch >= args.epochs  # False when --stop-after ends this sitting early
    for epoch in range(start_epoch, end_epoch):
        order = epoch_indices(len(train_labels), epoch, args.seed, sample_weights, rank, world)
        train_targets.set_epoch(epoch)
        progress = None
        if is_main and not args.no_progress:
            from tqdm import tqdm

            total, desc = -(-len(order) // args.batch_size), f"epoch {epoch + 1}/{args.epochs}"
            progress = lambda it, total=total, desc=desc: tqdm(it, total=total, desc=desc, unit="batch", leave=False)  # noqa: E731
        train_stats = train_one_epoch(
            train_model, train_images, train_targets, order, batch_size=args.batch_size, optimizer=optimizer,
            scheduler=scheduler, loss_fn=loss_fn, contract=contract, aug=aug, device=device, amp=amp, scaler=scaler,
            accum_steps=args.accum_steps, clip_grad=args.clip_grad, ema=ema,
            teacher=teacher, teacher_targets=cached_targets, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
            progress=progress,
        )  # fmt: skip
        val_metrics, _ = evaluate(eval_model(), val_images, val_labels, contract, device, amp=amp)
        record = {
            "epoch": epoch + 1, **train_stats, "lr": optimizer.param_groups[0]["lr"],
            "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"], "val_macro_f1": val_metrics["macro_f1"],
        }  # fmt: skip
        history.append(record)
        improved = val_metrics[args.monitor] > best["value"]
        if improved:
            best = {"metric": args.monitor, "value": val_metrics[args.monitor], "epoch": epoch + 1}
            stale = 0
        else:
            stale += 1
        if is_main:
            state = checkpoint_state(epoch + 1, val_metrics)
            if improved:
                save_checkpoint(state, run_dir / "best.pt")
            save_checkpoint(state, run_dir / "last.pt")
            atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2))
            print(
                f"epoch {epoch + 1:3d}/{args.epochs} | loss {train_stats['train_loss']:.4f} | "
                f"val loss {val_metrics['loss']:.4f} acc {val_metrics['accuracy']:.4f} F1 {val_metrics['macro_f1']:.4f}"
                f"{' *' if improved else ''} | {train_stats['samples_per_second']:.0f} img/s "
                f"(loader {train_stats['loader_samples_per_second']:.0f} img/s) | {train_stats['train_seconds']:.0f}s",
                flush=True,
            )
            _tensorboard(run_dir, record)
        if args.patience and stale >= args.patience:
            if is_main:
                print(f"fer-train: early stop, no {args.monitor} gain for {args.patience} epochs")
            complete = True
            break

    # ---- final evaluation of best.pt on val and test (selection never looks at test)
    if is_main:
        final_path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else None
        if final_path is not None:
            from fer_train.checkpoint import model_from_checkpoint

            best_model, _ = model_from_checkpoint(load_checkpoint(final_path))
        else:
            best_model = eval_model()
        best_model.to(device)
        results = {"checkpoint": str(final_path) if final_path else None, "best": best, "complete": complete,
                   "notes": manifest.notes}  # fmt: skip
        for split in ("val", "test"):
            if split in tensors:
                m, _ = evaluate(best_model, *tensors[split], contract, device, amp=amp)
                results[split] = m
        write_reports(run_dir, results, history)
        for split in ("val", "test"):
            if split in results:
                print(f"{split}: accuracy {results[split]['accuracy']:.4f} macro-F1 {results[split]['macro_f1']:.4f} "
                      f"({results[split]['num_samples']} images)")  # fmt: skip
        print(f"fer-train: results in {run_dir}")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


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
