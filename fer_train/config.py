"""``TrainConfig``: every fer-train option and its default, in one place.

The command line (``fer-train``), recipe files (``--config recipe.toml``), a run's ``config.json`` and a
checkpoint's ``train_args`` all use these names. ``None`` means "decided from other options": ``lr`` and
``weight_decay`` by ``opt``, ``mean`` and ``std`` by ``channels``, ``data_root`` by ``FER_DATA_ROOT``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainConfig:
    # data
    data_root: str | None = None
    protocol: str | None = None
    label_mode: str | None = None
    val_split: float | None = None
    test_split: float | None = None
    strict: bool = False
    cache_dir: str | None = None
    # model
    arch: str = "vgg"
    arch_arg: list[str] = field(default_factory=list)
    pretrained: str | None = None
    init: str | None = None
    input_size: int = 48
    channels: int = 1
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_margin: float = 0.1
    # optimisation
    epochs: int = 30
    batch_size: int = 64
    opt: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    accum_steps: int = 1
    clip_grad: float = 0.0
    loss: str = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    sampler: str = "random"
    # augmentation
    shift: float = 0.1
    scale_min: float = 0.9
    scale_max: float = 1.1
    rotation: float = 10.0
    no_hflip: bool = False
    erasing: float = 0.0
    policy: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    # run
    amp: str = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = False
    ema: float = 0.0
    monitor: str = "macro_f1"
    patience: int = 0
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs"
    name: str | None = None
    device: str = "auto"
    threads: int = 0
    no_progress: bool = False
    # distillation
    teacher: list[str] | None = None
    teacher_tta: str = "none"
    teacher_targets: str = "online"
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """A run's ``config.json`` or a checkpoint's ``train_args``: the fields this version knows, the rest dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


# what a None default stands for, as --help shows it
NONE_MEANS = {
    "data_root": "$FER_DATA_ROOT", "protocol": "image folders (fer2013 for a .csv root)", "label_mode": "majority",
    "val_split": "0.1 for class folders, else none", "test_split": "0", "cache_dir": "~/.cache/fer-toolchain",
    "pretrained": "none", "init": "none", "mean": "0.5 per channel", "std": "0.5 per channel",
    "lr": "1e-3 with adamw, 0.05 with sgd", "weight_decay": "0.05 with adamw, 5e-4 with sgd", "name": "MODEL-TIME",
    "teacher": "none",
}  # fmt: skip


# option names before the one CLI grammar (fer-train --model was the architecture; --model is an ONNX file everywhere)
RENAMED_OPTIONS = {"model": "arch", "model_arg": "arch_arg"}


def default_options() -> dict:
    return asdict(TrainConfig())


def upgrade_option_names(options: dict) -> dict:
    """A checkpoint's ``train_args``, a ``config.json`` or a recipe written with the old option names, in today's."""
    return {RENAMED_OPTIONS.get(k, k): v for k, v in options.items()}
