"""fer-export's command line: the click command built from ``ExportConfig``'s fields, and the checks a config passes
before any work starts. The stages are ``fer_export.pipeline``'s."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fer_export.config import ExportConfig
from fer_export.formats import check_formats
from fer_export.pipeline import export
from fer_export.prune import PruneError
from fer_export.training import train_options
from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.options import FerCommand, OptionError, config_of, config_options
from fer_runtime.outputs import version_option

HELP = """Checkpoint -> [distil] -> [prune + fine-tune] -> ONNX -> [INT8], each stage checked and reported.

\b
  fer-export --ckpt RUN/best.pt --int8                    # everyday path
  fer-export --distill-from TEACHER.pt --arch mobile --data-root ROOT --epochs 30 --int8
  fer-export --ckpt RUN/best.pt --prune 0.5 --finetune-epochs 10 --int8
  fer-export --ckpt STUDENT.pt --prune 0.5 --distill-from TEACHER.pt     # the teacher guides the fine-tune
  fer-export --model model.onnx --int8 --data-root ROOT   # quantize an exported model
  fer-export --model model.onnx --int8 --format onnx,openvino,tflite   # also OpenVINO IR and TFLite files

\b
Exit codes: 0 done, 2 a usage or input error (a format's extra missing, a model it cannot convert or a file
that disagrees with its ONNX file too), 3 INT8 lost more than --max-drop, 130 interrupted.
"""


class ExportCommand(FerCommand):
    """fer-export's command: a source given without its flag is named with the flag it needs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-"):
            flag = "--model" if args[0].endswith(".onnx") else "--ckpt"
            raise click.UsageError(f"name the source with its flag: {flag} {args[0]} (--ckpt for a checkpoint, --model "
                                   "for an ONNX file)")
        return super().parse_args(ctx, args)


@click.command("fer-export", cls=ExportCommand, help=HELP)
@config_options(ExportConfig)
@version_option("fer-export")
def command(**params: object) -> int:
    cfg = config_of(ExportConfig, params)
    check_config(cfg)
    return export(cfg)


def main(argv: list[str] | None = None) -> int:
    """fer-export on ``argv`` (default: the process's arguments); the exit code."""
    return command.main(argv, prog_name="fer-export", standalone_mode=False)


def parse_config(argv: list[str]) -> ExportConfig:
    """The config a command line gives, unchecked (what ``command`` runs with)."""
    with command.make_context("fer-export", list(argv)) as ctx:
        return config_of(ExportConfig, ctx.params)


def check_config(cfg: ExportConfig) -> None:
    """The config's sources and numbers make sense together: one line naming the flag when not."""
    _check_source(cfg)
    check_formats(cfg.format)
    if cfg.source and Path(cfg.source).is_dir():
        folder = Path(cfg.source)
        if (folder / "cv_config.json").is_file():
            raise OptionError(f"{folder} is a cross-validation: its models are one per fold ({folder / 'fold1' / 'best.pt'}"
                              " ...); to ship one, train on all the data with fer-train (no --folds) and export that")
        raise OptionError(f"{folder} is a folder: give the file, e.g. {folder / 'best.pt'}")
    if cfg.source and not Path(cfg.source).is_file():
        raise OptionError(f"not found: {cfg.source}")
    if cfg.model and cfg.pruning:
        raise OptionError("an ONNX model can only be quantized (--int8): pruning and distillation need --ckpt")
    if cfg.prune is not None and not 0.0 < cfg.prune < 1.0:
        raise PruneError(f"--prune must be in (0, 1), got {cfg.prune}")
    if cfg.prune_flops is not None and cfg.prune_flops <= 1.0:
        raise PruneError(f"--prune-flops is the FLOPs drop to reach, above 1: got {cfg.prune_flops}")
    if cfg.name is not None and (cfg.name in ("", ".", "..") or "/" in cfg.name or "\\" in cfg.name):
        raise OptionError(f"--name {cfg.name!r}: give a plain folder name (no '/', not '.' or '..'); --out-dir says where")
    if cfg.resume and not cfg.name:
        raise OptionError("--resume needs the --name of the interrupted export")
    if cfg.train_option and not (cfg.distill_from or cfg.pruning and cfg.finetune_epochs > 0):
        raise OptionError("--train-option sets the training stages: give --distill-from or --prune with --finetune-epochs")
    train_options(cfg.train_option)
    _check_framing(cfg)


def _check_framing(cfg: ExportConfig) -> None:
    """--crop-margin and --crop-offset checked before any work, as the contract will check them."""
    if cfg.crop_offset and len(cfg.crop_offset) != 2:
        raise OptionError(f"--crop-offset takes dx and dy: give it twice, got {len(cfg.crop_offset)} value(s)")
    try:
        ModelContract(classes=("any",), crop_margin=0.0 if cfg.crop_margin is None else cfg.crop_margin,
                      crop_offset=tuple(cfg.crop_offset) or (0.0, 0.0))
    except ContractError as exc:
        raise OptionError(f"--crop-margin / --crop-offset: {exc}") from None


def _check_source(cfg: ExportConfig) -> None:
    if cfg.ckpt and cfg.model:
        raise OptionError("give one source: --ckpt (a checkpoint) or --model (an ONNX file), not both")
    if cfg.ckpt and cfg.ckpt.endswith(".onnx"):
        raise OptionError(f"--ckpt {cfg.ckpt} is an ONNX file: quantize it with --model {cfg.ckpt}")
    if cfg.model and not cfg.model.endswith(".onnx"):
        raise OptionError(f"--model {cfg.model} is not an .onnx file: a fer-train checkpoint goes with --ckpt")
    if cfg.distill_from:
        if cfg.model:
            raise OptionError("distillation needs a fer-train checkpoint (--ckpt), not an ONNX file")
        if cfg.ckpt and not cfg.pruning:
            raise OptionError("with --ckpt, --distill-from guides the pruned model's fine-tune: add --prune")
        if not cfg.ckpt and not cfg.arch:
            raise OptionError("--distill-from needs --arch NAME (the student's architecture)")
    elif not cfg.source:
        raise OptionError("give what to export: --ckpt RUN/best.pt, --model model.onnx, or --distill-from TEACHER --arch NAME")


if __name__ == "__main__":
    sys.exit(main())
