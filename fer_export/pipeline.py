"""The export's stages in order, in a staging folder renamed into place when they are done (``atomic_dir``):

    checkpoint -> [distil] -> [prune + fine-tune] -> ONNX (checked against PyTorch) -> [INT8, gated]
    an exported ONNX file -> [INT8, gated]

Every file written gets its own decision rule fitted on val; every stage adds its row to the report.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_export.calibrate import calibrate_onnx, training_sampler, with_training_prior
from fer_export.config import ExportConfig
from fer_export.formats import export_formats, requested_formats
from fer_export.onnx_export import export_onnx, parity_check
from fer_export.quantize import FaceCalibrationReader, quantize_int8, stratified_sample
from fer_export.report import print_summary, reliability_plot, write_report
from fer_export.rows import latency_ms, onnx_row, torch_row
from fer_export.training import distill, prune_and_finetune
from fer_runtime.contract import ModelContract, read_onnx_contract
from fer_runtime.data import DecodedSplit, discover, load_split, resolve_data_root, run_manifest
from fer_runtime.errors import EXIT_GATE, OutputError
from fer_runtime.outputs import atomic_dir, check_output_dir, missing_dirs, remove_empty_dirs, staging_dir
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
from fer_train.config import TrainConfig
from fer_train.run_status import run_status

PARITY_IMAGES = 2000  # val images ONNX Runtime is checked on against PyTorch


def export(cfg: ExportConfig) -> int:
    """The whole export of a checked config (``fer_export.cli.check_config``) into ``out_dir/name``, staged and
    renamed into place when done; the exit code: 0, or 3 when the INT8 gate failed."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    source = Path(cfg.source) if cfg.source else None
    name = cfg.name or f"{(source.parent.name + '_' + source.stem) if source else cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    final_dir = Path(cfg.out_dir) / name
    check_output_dir(cfg.out_dir)
    if final_dir.exists() and not cfg.overwrite:
        raise OutputError(f"{final_dir} already exists: pick another --name or replace it with --overwrite")
    staging = staging_dir(final_dir)
    created = missing_dirs(staging)  # an --out-dir this export makes goes again if the export fails
    try:
        with atomic_dir(final_dir, resume=cfg.resume, keep=_resumable) as out:
            code = run_stages(cfg, source, out, name, final_dir)
    except BaseException:
        if _resumable(staging):
            print(f"fer-export: training checkpoints kept in {staging}; continue with --name {name} --resume",
                  file=sys.stderr)
        else:
            remove_empty_dirs(created[1:])  # no partial outputs on failure
        raise
    print(f"fer-export: wrote {final_dir}")
    return code


def _resumable(staging: Path) -> bool:
    """A failed export's staging folder is kept when it holds a training checkpoint to continue from (--resume)."""
    return staging.is_dir() and any(staging.rglob("last.pt"))


def run_stages(cfg: ExportConfig, source: Path | None, out: Path, name: str, final_dir: Path) -> int:
    """Every stage into ``out``, then the report (its paths naming ``final_dir``); the exit code."""
    report: dict = {"name": name, "source": str(source or cfg.distill_from), "artefacts": [], "paths": {}, "notes": []}
    if source is not None and source.suffix == ".onnx":
        code = quantize_only(cfg, source, out, report)
    else:
        code = from_checkpoint(cfg, source, out, report, final_dir)
    reliability_plot(report, out)
    write_report(out, report, final_dir)
    print_summary(report)
    return code


def from_checkpoint(cfg: ExportConfig, source: Path | None, out: Path, report: dict, final_dir: Path | None = None) -> int:
    """checkpoint (or a student distilled here) -> [prune + fine-tune] -> ONNX, checked -> [INT8]. A checkpoint made
    here is named in the contract where it will be, under ``final_dir``."""
    ckpt = distill(cfg, out, report) if cfg.distill_from and source is None else source
    state = load_checkpoint(ckpt)
    model, contract = model_from_checkpoint(state)
    # the run's splits, found under --data-root, then FER_DATA_ROOT, then the run's own root
    saved = TrainConfig.from_saved(state.get("train_args", {}))
    if source is not None and run_status(Path(source).parent) == "started":  # a run folder, its run not finished
        note = (f"{source} is from a run that has not finished (epoch {state.get('epoch', '?')} of {saved.epochs}): "
                f"fer-train --resume {Path(source).parent / 'last.pt'} goes on")
        report["notes"].append(note)
        print(f"fer-export: warning: {note}", file=sys.stderr)
    manifest = run_manifest(state.get("manifest"), cfg.data_root, saved.split_rules())
    manifest.check_classes(contract.classes)  # a class folder renamed or added since training: refused, not misread
    data = {s: load_split(manifest, s, contract.channels, contract.input_size)
            for s in ("train", "val", "test") if s in manifest.splits}
    report["artefacts"].append(torch_row("student (pytorch)" if cfg.distill_from else "pytorch", model, contract, data))
    if cfg.pruning:
        ckpt, state = prune_and_finetune(cfg, state, model, contract, data, out, report)
        model, contract = model_from_checkpoint(state)
        saved = TrainConfig.from_saved(state.get("train_args", {}))  # the fine-tune's own sampler gives the prior
    made_here = final_dir is not None and out.resolve() in Path(ckpt).resolve().parents
    shown = final_dir.resolve() / Path(ckpt).resolve().relative_to(out.resolve()) if made_here else Path(ckpt)
    contract = _export_contract(cfg, shown, state, contract, report, data["train"], saved.sampler)
    fp32_path = export_onnx(model, contract, out / "model.onnx", opset=cfg.opset)
    report["decision_rule"] = {"onnx fp32": calibrate_onnx(fp32_path, data["val"], cfg.threads)}
    _check_parity(model, fp32_path, data["val"], report)
    report["paths"]["onnx"] = str(fp32_path)
    return score_and_quantize(cfg, fp32_path, data, out, report)


def _export_contract(cfg: ExportConfig, ckpt: Path, state: dict, contract: ModelContract, report: dict,
                     train: DecodedSplit, sampler: str) -> ModelContract:
    """The checkpoint's contract with the export's provenance and the training split's class prior."""
    final_row = report["artefacts"][-1]  # the model being exported: pruned + fine-tuned when pruning ran
    provenance = {**contract.provenance, "source_checkpoint": str(ckpt.resolve()), "model": state["model"],
                  "metrics": {s: {k: final_row[s][k] for k in ("accuracy", "macro_f1")}
                              for s in ("val", "test") if s in final_row}}
    if cfg.distill_from:
        provenance["teacher_checkpoint"] = str(Path(cfg.distill_from).resolve())
    return with_training_prior(framed(cfg, contract.replace(provenance=provenance)), train, sampler)


def framed(cfg: ExportConfig, contract: ModelContract) -> ModelContract:
    """The contract with the crop framing given by --crop-margin and --crop-offset, where given."""
    framing = {k: v for k, v in (("crop_margin", cfg.crop_margin), ("crop_offset", cfg.crop_offset))
               if v not in (None, [], ())}
    return contract.replace(**framing) if framing else contract


def _check_parity(model: nn.Module, fp32_path: Path, val: DecodedSplit, report: dict) -> None:
    report["parity"] = parity = parity_check(model, fp32_path, val.images[:PARITY_IMAGES])
    print(f"fer-export: ONNX parity on {parity['images']} val images: top-1 agreement {parity['top1_agreement']:.4%}, "
          f"max logit diff {parity['max_abs_logit_diff']:.2e}")


def quantize_only(cfg: ExportConfig, source: Path, out: Path, report: dict) -> int:
    """An exported ONNX file, copied with its decision rule fitted again (and a training prior where it has none),
    then [INT8]."""
    contract = read_onnx_contract(source)
    report["source_provenance"] = {k: contract.provenance[k] for k in ("source_checkpoint", "model", "metrics")
                                   if k in contract.provenance}
    data = onnx_model_data(cfg, contract)
    fp32_path = out / "model.onnx"
    shutil.copyfile(source, fp32_path)
    with_prior = None
    if not contract.class_prior:  # a file exported before the decision rule: the prior of its training split
        sampler, where = training_sampler(contract.provenance)
        report["notes"].append(f"class_prior: the training split as sampler '{sampler}' showed it ({where})")
        with_prior = with_training_prior(contract, data["train"], sampler)
    if cfg.crop_margin is not None or cfg.crop_offset:
        with_prior = framed(cfg, with_prior or contract)
    report["decision_rule"] = {"onnx fp32": calibrate_onnx(fp32_path, data["val"], cfg.threads, with_prior)}
    return score_and_quantize(cfg, fp32_path, data, out, report)


def onnx_model_data(cfg: ExportConfig, contract: ModelContract) -> dict[str, DecodedSplit]:
    """The splits of the data an ONNX file is calibrated and scored on: --data-root, then FER_DATA_ROOT, then the root
    its contract records; split by --protocol, else the one it was trained under."""
    root = resolve_data_root(cfg.data_root, contract.provenance.get("data_root"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = contract.provenance.get("layout")
        protocol = cfg.protocol or contract.provenance.get("protocol") or ("fer2013" if layout == "fer2013" else None)
        manifest = discover(root, protocol, label_mode=contract.provenance.get("label_mode") if protocol == "ferplus" else None)
    manifest.check_classes(contract.classes)
    return {s: load_split(manifest, s, contract.channels, contract.input_size) for s in manifest.splits}


def score_and_quantize(cfg: ExportConfig, fp32_path: Path, data: dict[str, DecodedSplit], out: Path, report: dict) -> int:
    """The fp32 file's row, then with --int8 the INT8 stage, then the other --format files; the exit code."""
    fp32_row = onnx_row("onnx fp32", fp32_path, data, timed=not cfg.int8, threads=cfg.threads)  # INT8 times both
    report["artefacts"].append(fp32_row)
    code = int8_stage(cfg, fp32_path, data, out, report, fp32_row) if cfg.int8 else 0
    formats = requested_formats(cfg.format)
    if formats != ["onnx"]:
        calibration = read_onnx_contract(fp32_path).normalize(_calibration_images(cfg, data["train"])) if cfg.int8 else None
        export_formats(formats, out, data["val"].images[:PARITY_IMAGES], calibration, report)
    return code


def _calibration_images(cfg: ExportConfig, train: DecodedSplit) -> np.ndarray:
    """The stratified sample of training images every INT8 file is calibrated on (ONNX and TFLite alike)."""
    return train.images[stratified_sample(train.labels, cfg.calib_size, cfg.seed)]


def int8_stage(cfg: ExportConfig, fp32_path: Path, data: dict[str, DecodedSplit], out: Path, report: dict,
               fp32_row: dict) -> int:
    """Quantize on a stratified sample of training images, fit the INT8 file's own decision rule, time it beside the
    fp32 file, and gate it on its val accuracy drop; the exit code."""
    sample = _calibration_images(cfg, data["train"])
    reader = FaceCalibrationReader(sample, read_onnx_contract(fp32_path))
    keep = [k.strip() for k in cfg.keep_float.split(",") if k.strip() and k.strip() != "none"]
    int8_path = quantize_int8(fp32_path, out / "model.int8.onnx", reader, cfg.calib_method, keep_float=keep)
    report.setdefault("decision_rule", {})["onnx int8"] = calibrate_onnx(int8_path, data["val"], cfg.threads)
    int8_row = onnx_row("onnx int8", int8_path, data, timed=False, threads=cfg.threads)
    # the speed-up comes from one interleaved timing of both files, not from two separate moments
    fp32_row["latency_ms"], int8_row["latency_ms"] = latency_ms(fp32_path, int8_path)
    report["artefacts"].append(int8_row)
    report["paths"]["int8"] = str(int8_path)
    report["calibration"] = {"images": reader.images, "sampled": int(len(sample)), "method": cfg.calib_method,
                             "keep_float": keep}
    drop = 100 * (fp32_row["val"]["accuracy"] - int8_row["val"]["accuracy"])
    report["ratios"] = {
        "int8_size_reduction": fp32_row["file_kb"] / int8_row["file_kb"],
        "int8_speedup_b1_1thread": fp32_row["latency_ms"] / int8_row["latency_ms"],
        "int8_val_accuracy_drop_points": drop,
    }
    if "test" in fp32_row:
        report["ratios"]["int8_test_accuracy_drop_points"] = 100 * (fp32_row["test"]["accuracy"] - int8_row["test"]["accuracy"])
    return _int8_gate(cfg, drop, int8_path, report)


def _int8_gate(cfg: ExportConfig, drop: float, int8_path: Path, report: dict) -> int:
    """0, or 3 when INT8 loses more than --max-drop points of val accuracy (the INT8 file removed unless --force).

    A failed gate is an exit code, not an exception: the other stages' outputs and the report stay, to show why."""
    if drop <= cfg.max_drop:
        return 0
    msg = f"INT8 loses {drop:.2f} points of val accuracy (max {cfg.max_drop})"
    if cfg.force:
        report["notes"].append(msg + "; kept because of --force")
        return 0
    int8_path.unlink()
    report["paths"].pop("int8")
    report["notes"].append(msg + "; INT8 file removed (use --force to keep it)")
    print(f"fer-export: error: {msg}: try another --calib-method, --keep-float first_conv,classifier, or --force",
          file=sys.stderr)
    return EXIT_GATE
