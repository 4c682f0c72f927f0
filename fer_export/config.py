"""``ExportConfig``: every fer-export option and its default, in one place (the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExportConfig:
    # what to export: a checkpoint, an exported ONNX model to quantize, or (with distill_from) a student trained here
    ckpt: str | None = None
    model: str | None = None
    out_dir: str = "exports"
    name: str | None = None
    overwrite: bool = False
    resume: bool = False
    data_root: str | None = None
    protocol: str | None = None
    threads: int = 0
    no_progress: bool = False
    seed: int = 0
    # distillation
    distill_from: str | None = None
    arch: str | None = None
    arch_arg: list[str] = field(default_factory=list)
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    compare_baseline: bool = False
    epochs: int = 30
    train_option: list[str] = field(default_factory=list)
    # pruning
    prune: float | None = None
    prune_flops: float | None = None
    prune_steps: int = 1
    finetune_epochs: int = 10
    finetune_lr: float = 5e-4
    # ONNX and INT8
    opset: int = 17
    int8: bool = False
    calib_size: int = 512
    calib_method: str = "entropy"
    # ORT's CPU kernels run a 1-channel QLinearConv and QLinearAveragePool slower than their float versions
    keep_float: str = "first_conv,avg_pool"
    max_drop: float = 1.0
    force: bool = False

    @property
    def source(self) -> str | None:
        return self.ckpt or self.model
