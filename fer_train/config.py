"""``TrainConfig`` and ``EvalConfig``: every fer-train and fer-eval option, its default and its help, in one place.

Each field is also the command's ``--field-name`` option (``fer_runtime.options``). The command line, recipe files
(``--config recipe.toml``), a run's ``config.json`` and a checkpoint's ``train_args`` all use these names. ``None``
means "decided from other options": ``lr`` and ``weight_decay`` by ``opt``, ``mean`` and ``std`` by ``channels``,
``data_root`` by ``FER_DATA_ROOT`` (``fer_runtime.data.resolve_data_root``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from fer_runtime.data.ferplus import LABEL_MODES
from fer_runtime.data.groups import Grouping
from fer_runtime.data.shifts import SHIFTS
from fer_runtime.data.splits import PROTOCOLS
from fer_runtime.options import MAX_THREADS, checked_values, option

DEVICES = ["auto", "cpu", "cuda"]
THREADS_HELP = "CPU threads for torch (0: all cores, torch's own default)"
CACHE = "~/.cache/fer-toolchain"
SHIFT_NAMES = list(SHIFTS)
# a fine-tune from a trained model (--init): a shorter schedule at a lower peak learning rate (docs/training.md)
SCRATCH_EPOCHS, FINETUNE_EPOCHS, FINETUNE_LR_FACTOR, FINETUNE_FREEZE = 30, 20, 3, 3


@dataclass
class TrainConfig:
    # data
    data_root: str | None = option(None, "image folders, fer2013.csv or a FER+ folder (see docs/data.md)",
                                   none_means="$FER_DATA_ROOT, then a resumed run's")
    protocol: str | None = option(None, "fer2013: val=PublicTest, test=PrivateTest; ferplus: FER+ votes, val=FER2013Valid, "
                                  "test=FER2013Test", choices=PROTOCOLS,
                                  none_means="image folders (fer2013 for a .csv root)")
    label_mode: str | None = option(None, "FER+ training labels (val/test are always majority)", choices=LABEL_MODES,
                                    none_means="majority")
    val_split: float | None = option(None, "fraction carved (stratified, seeded) for validation",
                                     none_means="0.1 for class folders, else none")
    test_split: float | None = option(None, "fraction carved for test (class-folder layout)", none_means="0")
    group_by: str | None = option(None, "keep the images of one person or sequence in one split: a regular expression "
                                  "searched in each path below its class folder, its first group (or whole match) "
                                  "naming the group, e.g. '^(S\\d+)_' or '^([^/]+)/'", metavar="REGEX",
                                  none_means="split image by image")
    folds: int = option(0, "K-fold cross-validation by --group-by groups: K runs, each testing on one fold, and their "
                        "mean ± std (class-folder roots)", bounds=(0, None))
    fold: int | None = option(None, "with --folds: train only this fold's run (1 to K)", none_means="all folds")
    strict: bool = option(False, "unreadable images are fatal")
    cache_dir: str | None = option(None, "decoded-image cache", none_means=CACHE)
    # model
    arch: str = option("edge", "architecture: a registered name (edge: the shipped models' own; vgg, mobile, resnet, "
                       "simple_cnn) or timm:<name>")
    arch_arg: list[str] = option([], "architecture option, e.g. width=0.5 (repeat for several)", metavar="KEY=VALUE",
                                 multiple=True)
    pretrained: str | None = option(None, "local weights file ('hub' tries a timm download)")
    init: str | None = option(None, "start from a checkpoint's architecture and weights (e.g. a pruned model), an "
                              "exported fp32 .onnx, or a shipped model by name (ferplus, fer2013)")
    input_size: int = option(48, "input side in pixels")
    channels: int = option(1, "1 (grey) or 3 (colour) input channels", choices=[1, 3])
    mean: list[float] | None = option(None, "per-channel input mean (repeat once per channel)", multiple=True,
                                      none_means="0.5 per channel")
    std: list[float] | None = option(None, "per-channel input std (repeat once per channel)", multiple=True,
                                     none_means="0.5 per channel")
    crop_margin: float = option(0.02, "face-box margin per side recorded in the contract: how the training crops frame a "
                                "detector's box (0.02 for FER2013-style crops under the Haar cascade: "
                                "benchmarks/scripts/measure_framing.py)")
    freeze: int | None = option(None, "leading convolutions (with their BatchNorms) kept as --init gave them",
                                bounds=(0, None), none_means=f"{FINETUNE_FREEZE} with --init, else 0")
    qat: bool = option(False, "quantization-aware: train with the INT8 rounding fer-export --int8 applies (fine-tune "
                       "a trained run with --init)")
    # optimisation
    epochs: int | None = option(None, "training epochs (0 with --resume: only evaluate)",
                                none_means=f"{SCRATCH_EPOCHS}; {FINETUNE_EPOCHS} with --init")
    batch_size: int = option(64, "images per step")
    opt: str = option("adamw", "AdamW, or SGD with Nesterov momentum", choices=["adamw", "sgd"])
    lr: float | None = option(None, "peak learning rate",
                              none_means=f"1e-3 with adamw, 0.05 with sgd; divided by {FINETUNE_LR_FACTOR:g} with --init")
    weight_decay: float | None = option(None, "weight decay (not on biases and norms)",
                                        none_means="0.05 with adamw, 5e-4 with sgd")
    momentum: float = option(0.9, "SGD momentum")
    warmup_epochs: float = option(1.0, "linear warmup, in epochs")
    min_lr_ratio: float = option(0.01, "cosine floor as a fraction of --lr")
    accum_steps: int = option(1, "gradient accumulation steps")
    clip_grad: float = option(0.0, "gradient norm clip (0 off)")
    loss: str = option("ce", "loss on the (soft) targets", choices=["ce", "weighted_ce", "focal"])
    focal_gamma: float = option(2.0, "focal loss gamma")
    label_smoothing: float = option(0.0, "label smoothing")
    sampler: str = option("random", "class-balanced sampling", choices=["random", "balanced", "sqrt"])
    # augmentation
    shift: float = option(0.1, "random translation, fraction of side")
    scale_min: float = option(0.9, "smallest random scale")
    scale_max: float = option(1.1, "largest random scale")
    rotation: float = option(10.0, "max degrees")
    no_hflip: bool = option(False, "no random horizontal flips")
    erasing: float = option(0.0, "RandomErasing probability")
    policy: str = option("none", "augmentation policy", choices=["none", "randaugment", "autoaugment"])
    mixup: float = option(0.0, "mixup alpha (0 off)")
    cutmix: float = option(0.0, "cutmix alpha (0 off)")
    mix_prob: float = option(1.0, "probability of mixing a batch")
    fixed_shift: str | None = option(None, "every training image under this camera shift at its moderate severity "
                                     "(fer_runtime/data/shifts.py): the information-floor measurement", choices=SHIFT_NAMES,
                                     none_means="none")
    degrade: float = option(0.0, "probability that an image gets one or two camera degradations (blur, JPEG, noise, "
                            "exposure, a small face, a colour camera), each up to the shift report's harsh level",
                            bounds=(0.0, 1.0))
    # run
    amp: str = option("auto", "auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32",
                      choices=["auto", "bf16", "fp16", "off"])
    channels_last: bool = option(False, "NHWC weights; about 10-20% faster CPU training steps on AVX2 (checkpoints stay NCHW)")
    grad_checkpointing: bool = option(False, "timm models that support it")
    ema: float = option(0.0, "EMA decay of weights, e.g. 0.999 (0 off)")
    monitor: str | None = option(None, "validation metric for best.pt; last: best.pt is the last epoch (a fixed schedule, "
                                 "for validation splits too small to choose an epoch on)",
                                 choices=["macro_f1", "accuracy", "last"], none_means="macro_f1; last with --init")
    patience: int = option(0, "early stop after N epochs without improvement (0 off)")
    seed: int = option(0, "seed of splits, sampling and initialisation")
    deterministic: bool = option(False, "deterministic torch algorithms")
    out_dir: str = option("runs", "parent folder of the run folder")
    name: str | None = option(None, "run folder name; an existing run is refused", none_means="MODEL-TIME")
    device: str = option("auto", "auto: CUDA when present", choices=DEVICES)
    threads: int = option(0, THREADS_HELP, bounds=(0, MAX_THREADS))
    no_progress: bool = option(False, "no per-batch progress bars")
    # distillation (also what fer-export's distillation sets)
    teacher: list[str] | None = option(None, "teacher checkpoint (.pt) or exported model (.onnx) for knowledge "
                                       "distillation; repeated: averaged (mean probability)", metavar="MODEL",
                                       multiple=True, none_means="none")
    teacher_tta: str = option("none", "average each teacher over the batch and its mirror image", choices=["none", "flip"])
    teacher_targets: str = option("online", "online: teachers score every augmented batch; cached: they score the "
                                  "un-augmented training images once (no per-step cost; not with mixup/cutmix)",
                                  choices=["online", "cached"])
    teacher_targets_file: str | None = option(None, "distil from stored teacher targets instead of --teacher: a "
                                              "run's teacher_targets.npz, scored on the same training images",
                                              metavar="NPZ")
    kd_alpha: float = option(0.7, "weight of the KD term")
    kd_temperature: float = option(4.0, "softmax temperature of the KD term")

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """A run's ``config.json`` or a checkpoint's ``train_args``: the fields this version knows (the rest dropped),
        checked as the command line checks them."""
        known = {f.name for f in fields(cls)}
        saved = {"freeze": 0, **saved}  # a run saved before --freeze froze nothing (None would mean 3 with --init)
        return cls(**checked_values(cls, {k: v for k, v in saved.items() if k in known}, "the run's saved config"))

    def split_rules(self) -> dict:
        """How this run split its data, for ``run_manifest`` on a machine where the saved manifest's files are not."""
        return {"protocol": self.protocol, "label_mode": self.label_mode, "val_split": self.val_split,
                "test_split": self.test_split, "seed": self.seed, "group_by": self.group_by, "folds": self.folds,
                "fold": self.fold}

    def grouping(self) -> Grouping | None:
        """How the splits keep groups whole; a cross-validation that names no fold (its data report) splits as one."""
        if self.group_by is None:
            return None
        return Grouping(self.group_by, self.folds, self.fold) if self.fold is not None else Grouping(self.group_by)


@dataclass
class EvalConfig:
    ckpt: list[str] = option([], "RUN/best.pt (required); repeated: an ensemble (mean of softmax)", metavar="CKPT",
                             multiple=True)
    data_root: str | None = option(None, "the data to score", none_means="$FER_DATA_ROOT, then the run's")
    split: str = option("test", "split to score", choices=["train", "val", "test"])
    tta: str = option("none", "test-time augmentation", choices=["none", "flip", "tencrop"])
    no_dedup: bool = option(False, "skip the second figure on the images that have no pixel-identical copy in train")
    out_dir: str | None = option(None, "where to write metrics", none_means="beside the checkpoint")
    no_ema: bool = option(False, "use raw weights even if the checkpoint has EMA weights")
    strict: bool = option(False, "unreadable images are fatal")
    cache_dir: str | None = option(None, "decoded-image cache", none_means=CACHE)
    device: str = option("auto", "auto: CUDA when present", choices=DEVICES)
    threads: int = option(0, THREADS_HELP, bounds=(0, MAX_THREADS))
