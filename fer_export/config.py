"""``ExportConfig``: every fer-export option, its default and its help, declared once (the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass

from fer_runtime.data import PROTOCOLS
from fer_runtime.options import MAX_THREADS, option

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class ExportConfig:
    # what to export: a checkpoint, an exported ONNX model to quantize, or (with distill_from) a student trained here
    ckpt: str | None = option(None, "fer-train checkpoint to export (RUN/best.pt)", metavar="CKPT")
    model: str | None = option(None, "an exported ONNX model to quantize", metavar="MODEL.onnx")
    out_dir: str = option("exports", "parent folder; one subfolder per export", metavar="DIR")
    name: str | None = option(None, "export folder name; an existing one is refused", metavar="NAME",
                              none_means="source name + time")
    overwrite: bool = option(False, "replace an existing export of the same --name")
    resume: bool = option(False, "continue an interrupted export of the same --name: finished training stages are kept, "
                          "unfinished ones resume from their last.pt")
    data_root: str | None = option(None, "data for calibration and scoring", metavar="ROOT",
                                   none_means="$FER_DATA_ROOT, then the run's")
    protocol: str | None = option(None, "for an ONNX model without a run manifest", choices=PROTOCOLS,
                                  none_means="the model's")
    threads: int = option(0, "torch and ONNX Runtime threads for training and scoring (0: all cores); latency is always "
                          "timed at batch 1, one thread", bounds=(0, MAX_THREADS))
    no_progress: bool = option(False, "no per-batch progress in the training stages")
    seed: int = option(0, "for calibration sampling (training stages keep the source run's seed: it fixes its splits)")
    # distillation
    distill_from: str | None = option(None, "train a student from this teacher", metavar="TEACHER.pt")
    arch: str | None = option(None, "the student's architecture (registry name or timm:<name>)", metavar="NAME")
    arch_arg: list[str] = option([], "architecture option (repeat the flag for more)", metavar="KEY=VALUE", multiple=True)
    kd_alpha: float = option(0.7, "weight of the distillation term")
    kd_temperature: float = option(4.0, "softmax temperature of the KD term")
    compare_baseline: bool = option(False, "also train the student alone, same recipe")
    epochs: int = option(30, "student training epochs", bounds=(1, None))
    train_option: list[str] = option([], "a fer-train option (TrainConfig name) for student and fine-tune runs, e.g. "
                                     "batch_size=64 (repeat the flag for more)", metavar="KEY=VALUE", multiple=True)
    # pruning
    prune: float | None = option(None, "fraction of channels to remove", metavar="RATIO")
    prune_flops: float | None = option(None, "prune until FLOPs drop X-fold", metavar="X")
    prune_steps: int = option(1, "iterative pruning steps", bounds=(1, None))
    finetune_epochs: int = option(10, "epochs after pruning", bounds=(0, None))
    finetune_lr: float = option(5e-4, "peak learning rate after pruning")
    # the crop fer-run takes around a detector box (benchmarks/scripts/measure_framing.py measures it)
    crop_margin: float | None = option(None, "face-box margin per side to record in the contract",
                                       none_means="the checkpoint's")
    crop_offset: list[float] = option([], "crop centre offset from the box centre, in box sides: give the flag twice, "
                                      "dx then dy (not given: the checkpoint's)", multiple=True, metavar="SIDES")
    # formats, ONNX and INT8
    format: str = option("onnx", "comma list of onnx, openvino, tflite: each format's fp32 file and, with --int8, its INT8 "
                         "file, each checked against the ONNX file of the same precision (ONNX is always written)",
                         metavar="LIST")
    opset: int = option(17, "ONNX opset (13, the first with per-channel INT8, to 20, torch's exporter's last)",
                        bounds=(13, 20))
    int8: bool = option(False, "also write an INT8 (QDQ) model")
    calib_size: int = option(512, "stratified training images for calibration", bounds=(1, None))
    calib_method: str = option("entropy", "INT8 activation range calibration", choices=CALIBRATION_METHODS)
    # ORT's CPU kernels run a 1-channel QLinearConv and QLinearAveragePool slower than their float versions
    keep_float: str = option("first_conv,avg_pool", "comma list kept in float: first_conv, classifier, avg_pool, node names; "
                             "'none' quantizes all")
    max_drop: float = option(1.0, "max INT8 accuracy drop on val, in points", bounds=(0, None))
    force: bool = option(False, "keep the INT8 model even past --max-drop")

    @property
    def source(self) -> str | None:
        return self.ckpt or self.model

    @property
    def pruning(self) -> bool:
        return self.prune is not None or self.prune_flops is not None
