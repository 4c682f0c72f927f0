"""fer-export: checkpoint -> [distil] -> [prune + fine-tune] -> ONNX -> [INT8], each stage checked and reported.

    fer-export --ckpt RUN/best.pt --int8                    # everyday path
    fer-export --distill-from TEACHER.pt --arch mobile --data-root ROOT --epochs 30 --int8
    fer-export --ckpt RUN/best.pt --prune 0.5 --finetune-epochs 10 --int8
    fer-export --ckpt STUDENT.pt --prune 0.5 --distill-from TEACHER.pt     # the teacher guides the fine-tune
    fer-export --model model.onnx --int8 --data-root ROOT   # quantize an exported model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from fer_export.config import ExportConfig
from fer_export.onnx_export import ExportError, export_onnx, parity_check, save_onnx_atomic, set_contract
from fer_export.prune import PruneError, count_flops_params, prune_channels
from fer_export.quantize import FaceCalibrationReader, QuantizationError, quantize_int8, stratified_sample
from fer_export.report import onnx_latency_ms, write_report
from fer_runtime.calibration import (
    calibration_summary,
    fit_prior_correction,
    fit_temperature,
    plot_reliability,
    reliability,
    training_prior,
)
from fer_runtime.contract import ContractError, read_onnx_contract
from fer_runtime.data import PROTOCOLS, DataError, SplitManifest, discover, load_split, run_manifest
from fer_runtime.options import load_recipe
from fer_runtime.outputs import (
    FerArgumentParser,
    HelpFormatter,
    OutputError,
    check_output_dir,
    check_renamed_flags,
    missing_dirs,
    remove_empty_dirs,
)
from fer_runtime.session import OnnxModel, decision_probabilities
from fer_train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from fer_train.config import TrainConfig
from fer_train.engine import evaluate
from fer_train.metrics import classification_metrics
from fer_train.models import ModelError
from fer_train.train import fit


def build_parser() -> argparse.ArgumentParser:
    D = ExportConfig()
    p = FerArgumentParser("fer-export", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt", default=D.ckpt, metavar="CKPT", help="fer-train checkpoint to export (RUN/best.pt)")
    p.add_argument("--model", default=D.model, metavar="MODEL.onnx", help="an exported ONNX model to quantize")
    p.add_argument("--out-dir", default=D.out_dir, help="parent folder; one subfolder per export")
    p.add_argument("--name", default=D.name, help="export folder name (default: source name + time); an existing one is "
                   "refused")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing export of the same --name")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted export of the same --name: finished training stages are kept, "
                        "unfinished ones resume from their last.pt")  # fmt: skip
    p.add_argument("--data-root", default=D.data_root, help="data for calibration and scoring (default: the run's)")
    p.add_argument("--protocol", default=D.protocol, choices=PROTOCOLS, help="for an ONNX model without a run manifest")
    p.add_argument("--threads", type=int, default=D.threads, help="torch and ONNX Runtime threads for training and "
                   "scoring (0: all cores); latency is always timed at batch 1, one thread")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress in the training stages")
    p.add_argument("--seed", type=int, default=D.seed, help="for calibration sampling and training stages")
    g = p.add_argument_group("distillation")
    g.add_argument("--distill-from", default=D.distill_from, metavar="TEACHER.pt", help="train a student from this teacher")
    g.add_argument("--arch", default=D.arch, help="the student's architecture (registry name or timm:<name>)")
    g.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE", help="architecture option")
    g.add_argument("--kd-alpha", type=float, default=D.kd_alpha, help="weight of the distillation term")
    g.add_argument("--kd-temperature", type=float, default=D.kd_temperature, help="softmax temperature of the KD term")
    g.add_argument("--compare-baseline", action="store_true", help="also train the student alone, same recipe")
    g.add_argument("--epochs", type=int, default=D.epochs, help="student training epochs")
    g.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a fer-train option (TrainConfig name) for student and fine-tune runs, e.g. batch_size=64")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune", type=float, default=D.prune, metavar="RATIO", help="fraction of channels to remove")
    g.add_argument("--prune-flops", type=float, default=D.prune_flops, metavar="X", help="prune until FLOPs drop X-fold")
    g.add_argument("--prune-steps", type=int, default=D.prune_steps, help="iterative pruning steps")
    g.add_argument("--finetune-epochs", type=int, default=D.finetune_epochs, help="epochs after pruning")
    g.add_argument("--finetune-lr", type=float, default=D.finetune_lr, help="peak learning rate after pruning")
    g = p.add_argument_group("ONNX and INT8")
    g.add_argument("--opset", type=int, default=D.opset, help="ONNX opset")
    g.add_argument("--int8", action="store_true", help="also write an INT8 (QDQ) model")
    g.add_argument("--calib-size", type=int, default=D.calib_size, help="stratified training images for calibration")
    g.add_argument("--calib-method", default=D.calib_method, choices=["minmax", "entropy", "percentile"],
                   help="INT8 activation range calibration")
    g.add_argument("--keep-float", default=D.keep_float,
                   help="comma list kept in float: first_conv, classifier, avg_pool, node names; 'none' quantizes all")
    g.add_argument("--max-drop", type=float, default=D.max_drop, help="max INT8 accuracy drop on val, in points")
    g.add_argument("--force", action="store_true", help="keep the INT8 model even past --max-drop")
    return p


def parse_config(argv: list[str] | None = None) -> ExportConfig:
    argv = sys.argv[1:] if argv is None else argv
    check_renamed_flags("fer-export", argv)
    if argv and not argv[0].startswith("-"):
        flag = "--model" if argv[0].endswith(".onnx") else "--ckpt"
        raise ValueError(f"name the source with its flag: {flag} {argv[0]} (--ckpt for a checkpoint, --model for an "
                         "ONNX file)")  # fmt: skip
    return ExportConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        return export(cfg)
    except (ExportError, QuantizationError, PruneError, CheckpointError, DataError, ContractError, ModelError,
            OutputError, ValueError, FileNotFoundError) as exc:  # fmt: skip
        print(f"fer-export: error: {exc}", file=sys.stderr)
        return 2


def _score(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    m = classification_metrics(labels, probs.argmax(1), classes)
    m.pop("confusion_matrix", None)
    return m


def _check_config(cfg: ExportConfig) -> None:
    pruning = cfg.prune is not None or cfg.prune_flops is not None
    if cfg.ckpt and cfg.model:
        raise ValueError("give one source: --ckpt (a checkpoint) or --model (an ONNX file), not both")
    if cfg.ckpt and cfg.ckpt.endswith(".onnx"):
        raise ValueError(f"--ckpt {cfg.ckpt} is an ONNX file: quantize it with --model {cfg.ckpt}")
    if cfg.model and not cfg.model.endswith(".onnx"):
        raise ValueError(f"--model {cfg.model} is not an .onnx file: a fer-train checkpoint goes with --ckpt")
    if cfg.distill_from:
        if cfg.model:
            raise ValueError("distillation needs a fer-train checkpoint (--ckpt), not an ONNX file")
        if cfg.ckpt and not pruning:
            raise ValueError("with --ckpt, --distill-from guides the pruned model's fine-tune: add --prune")
        if not cfg.ckpt and not cfg.arch:
            raise ValueError("--distill-from needs --arch NAME (the student's architecture)")
    elif not cfg.source:
        raise ValueError("give what to export: --ckpt RUN/best.pt, --model model.onnx, or --distill-from TEACHER --arch NAME")
    if cfg.source and not Path(cfg.source).is_file():
        raise FileNotFoundError(f"not found: {cfg.source}")
    if cfg.model and (pruning or cfg.distill_from):
        raise ValueError("an ONNX model can only be quantized (--int8): pruning and distillation need --ckpt")
    if cfg.prune is not None and not 0.0 < cfg.prune < 1.0:
        raise PruneError(f"--prune must be in (0, 1), got {cfg.prune}")
    if cfg.calib_size < 1:
        raise QuantizationError("--calib-size must be at least 1")
    if cfg.threads < 0:
        raise ValueError(f"--threads must be 0 (all cores) or more, got {cfg.threads}")


def export(cfg: ExportConfig) -> int:
    """The whole export into ``out_dir/name`` (staged, renamed into place when done); the exit code: 0, or 3 when
    the INT8 gate failed."""
    _check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    source = Path(cfg.source) if cfg.source else None
    name = cfg.name or f"{(source.parent.name + '_' + source.stem) if source else cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    final_dir = Path(cfg.out_dir) / name
    staging = Path(cfg.out_dir) / f".{name}.partial"
    if cfg.resume and not cfg.name:
        raise ValueError("--resume needs the --name of the interrupted export")
    check_output_dir(cfg.out_dir)
    if final_dir.exists() and not cfg.overwrite:
        raise OutputError(f"{final_dir} already exists: pick another --name or replace it with --overwrite")
    if staging.exists() and not cfg.resume:
        shutil.rmtree(staging)
    created = missing_dirs(staging)  # an --out-dir this export makes goes again if the export fails
    staging.mkdir(parents=True, exist_ok=True)
    try:
        code = _run_stages(cfg, source, staging, name, final_dir)
    except BaseException:
        if any(staging.rglob("last.pt")):
            print(f"fer-export: training checkpoints kept in {staging}; continue with --name {name} --resume",
                  file=sys.stderr)  # fmt: skip
        else:
            shutil.rmtree(staging, ignore_errors=True)  # no partial outputs on failure
            remove_empty_dirs(created[1:])
        raise
    if final_dir.exists():
        shutil.rmtree(final_dir)
    staging.rename(final_dir)
    print(f"fer-export: wrote {final_dir}")
    return code


def _run_stages(cfg: ExportConfig, source: Path | None, out: Path, name: str, final_dir: Path) -> int:
    report: dict = {"name": name, "source": str(source or cfg.distill_from), "artefacts": [], "paths": {}, "notes": []}
    if source is not None and source.suffix == ".onnx":
        return _quantize_only(cfg, source, out, report, final_dir)
    ckpt = source

    if cfg.distill_from and source is None:
        ckpt = _distill(cfg, out, report)
    state = load_checkpoint(ckpt)
    model, contract = model_from_checkpoint(state)
    manifest = _manifest(state, cfg.data_root)
    data = {s: load_split(manifest, s, contract.channels, contract.input_size)
            for s in ("train", "val", "test") if s in manifest.splits}  # fmt: skip
    torch_row = _torch_row("student (pytorch)" if cfg.distill_from else "pytorch", model, contract, data)
    report["artefacts"].append(torch_row)

    if cfg.prune is not None or cfg.prune_flops is not None:
        ckpt, model = _prune(cfg, state, model, contract, data, out, report)
        state = load_checkpoint(ckpt)
        model, contract = model_from_checkpoint(state)

    final_row = report["artefacts"][-1]  # the model being exported: pruned + fine-tuned when pruning ran
    provenance = {**contract.provenance, "source_checkpoint": str(Path(ckpt).resolve()), "model": state["model"],
                  "metrics": {s: {k: final_row[s][k] for k in ("accuracy", "macro_f1")}
                              for s in ("val", "test") if s in final_row}}  # fmt: skip
    if cfg.distill_from:
        provenance["teacher_checkpoint"] = str(Path(cfg.distill_from).resolve())
    contract = contract.replace(provenance=provenance)
    sampler = state.get("train_args", {}).get("sampler", "random")
    contract = contract.replace(class_prior=training_prior(data["train"].labels, contract.num_classes, sampler,
                                                           data["train"].targets))  # fmt: skip
    fp32_path = export_onnx(model, contract, out / "model.onnx", opset=cfg.opset)
    report["decision_rule"] = {"onnx fp32": _calibrate_onnx(fp32_path, data["val"], cfg.threads)}
    parity_images = data["val"].images[:2000]
    report["parity"] = parity_check(model, fp32_path, parity_images)
    print(f"fer-export: ONNX parity on {report['parity']['images']} val images: top-1 agreement "
          f"{report['parity']['top1_agreement']:.4%}, max logit diff {report['parity']['max_abs_logit_diff']:.2e}")  # fmt: skip
    report["paths"]["onnx"] = str(fp32_path)
    # _int8 times fp32 and INT8 together
    fp32_row = _onnx_row("onnx fp32", fp32_path, data, timed=not cfg.int8, threads=cfg.threads)
    report["artefacts"].append(fp32_row)
    code = 0
    if cfg.int8:
        code = _int8(cfg, fp32_path, data, out, report, fp32_row)
    _reliability_plot(report, out)
    write_report(out, report, final_dir)
    _print_summary(report)
    return code


def _manifest(state: dict, data_root: str | None) -> SplitManifest:
    return run_manifest(state.get("manifest"), data_root, state.get("train_args", {}))


def _torch_row(label: str, model, contract, data) -> dict:
    """The PyTorch model's size and scores, from fer-train's own ``evaluate``."""
    macs, params = count_flops_params(model, contract)
    row = {"name": label, "params": params, "macs": macs}
    for split in ("val", "test"):
        if split in data:
            images = torch.from_numpy(np.ascontiguousarray(data[split].images))
            metrics, _ = evaluate(model, images, torch.from_numpy(data[split].labels), contract, torch.device("cpu"))
            row[split] = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "loss")}
    return row


def _calibrate_onnx(path: Path, val, threads: int = 0) -> dict:
    """Fit this file's own temperature on val (INT8 logits differ a little from fp32's), then its prior correction
    (after the temperature, on the same split), and write both into its contract. Returns the fit."""
    model = OnnxModel(path, threads=threads, providers=["CPUExecutionProvider"])
    raw = model.raw_outputs(val.images)
    c = model.contract
    temperature = fit_temperature(raw, val.labels)
    fit = {"temperature": temperature}
    if c.class_prior:
        fit.update(fit_prior_correction(raw, val.labels, temperature, c.class_prior, c.output))
    proto = onnx.load(str(path))
    set_contract(proto, c.replace(temperature=temperature, prior_correction=fit.get("prior_correction", 0.0)))
    save_onnx_atomic(proto, path)
    return fit


def _onnx_row(label: str, path: Path, data: dict, timed: bool = True, threads: int = 0) -> dict:
    """Scores and calibration on every split; ``timed=False`` when the caller times this file beside another."""
    model = OnnxModel(path, threads=threads, providers=["CPUExecutionProvider"])
    c = model.contract
    row = {"name": label, "file": str(path), "file_kb": round(path.stat().st_size / 1024, 1), "temperature": c.temperature,
           "prior_correction": c.prior_correction}  # fmt: skip
    if timed:
        row["latency_ms"] = onnx_latency_ms(path)[0]
    for split in ("val", "test"):
        if split in data:
            raw, labels = model.raw_outputs(data[split].images), data[split].labels
            # the figures under the shipped decision rule, and the raw argmax's (the training prior) beside them
            probs = decision_probabilities(raw, c)
            row[split] = _score(probs, labels, list(c.classes))
            raw_argmax = _score(decision_probabilities(raw, c, 0.0), labels, list(c.classes))
            row[split]["train_prior"] = {k: raw_argmax[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
            row[split]["calibration"] = calibration_summary(raw, labels, c.temperature, c.output)
            row[split]["calibration"]["ece_decision_rule"] = reliability(probs, labels)["ece"]
    return row


def _reliability_plot(report: dict, out: Path) -> None:
    split = "test" if any("test" in r for r in report["artefacts"]) else "val"
    curves = {r["name"]: r[split]["calibration"] for r in report["artefacts"] if "calibration" in r.get(split, {})}
    try:
        path = plot_reliability(curves, out / "reliability.png", title=f"{split} split; temperature fitted on val")
    except ImportError:
        return
    report["paths"]["reliability"] = str(path)


def _int8(cfg: ExportConfig, fp32_path: Path, data: dict, out: Path, report: dict, fp32_row: dict) -> int:
    contract = read_onnx_contract(fp32_path)
    train = data["train"]
    idx = stratified_sample(train.labels, cfg.calib_size, cfg.seed)
    reader = FaceCalibrationReader(train.images[idx], contract)
    keep = [k.strip() for k in cfg.keep_float.split(",") if k.strip() and k.strip() != "none"]
    int8_path = quantize_int8(fp32_path, out / "model.int8.onnx", reader, cfg.calib_method, keep_float=keep)
    report.setdefault("decision_rule", {})["onnx int8"] = _calibrate_onnx(int8_path, data["val"], cfg.threads)
    int8_row = _onnx_row("onnx int8", int8_path, data, timed=False, threads=cfg.threads)
    # the speed-up comes from one interleaved timing of both files, not from two separate moments
    fp32_row["latency_ms"], int8_row["latency_ms"] = onnx_latency_ms(fp32_path, int8_path)
    report["artefacts"].append(int8_row)
    report["paths"]["int8"] = str(int8_path)
    report["calibration"] = {"images": int(len(idx)), "method": cfg.calib_method, "keep_float": keep}
    drop = 100 * (fp32_row["val"]["accuracy"] - int8_row["val"]["accuracy"])
    report["ratios"] = {
        "int8_size_reduction": fp32_row["file_kb"] / int8_row["file_kb"],
        "int8_speedup_b1_1thread": fp32_row["latency_ms"] / int8_row["latency_ms"],
        "int8_val_accuracy_drop_points": drop,
    }
    if "test" in fp32_row:
        report["ratios"]["int8_test_accuracy_drop_points"] = 100 * (fp32_row["test"]["accuracy"] - int8_row["test"]["accuracy"])
    if drop > cfg.max_drop:
        msg = f"INT8 loses {drop:.2f} points of val accuracy (max {cfg.max_drop})"
        if not cfg.force:
            # The other stages' outputs and the report stay: they show why the gate failed.
            int8_path.unlink()
            report["paths"].pop("int8")
            report["notes"].append(msg + "; INT8 file removed (use --force to keep it)")
            print(f"fer-export: error: {msg}: try another --calib-method, --keep-float first_conv,classifier, "
                  "or --force", file=sys.stderr)  # fmt: skip
            return 3
        report["notes"].append(msg + "; kept because of --force")
    return 0


def _quantize_only(cfg: ExportConfig, source: Path, out: Path, report: dict, final_dir: Path) -> int:
    contract = read_onnx_contract(source)
    report["source_provenance"] = {k: contract.provenance[k] for k in ("source_checkpoint", "model", "metrics")
                                   if k in contract.provenance}  # fmt: skip
    root = cfg.data_root or contract.provenance.get("data_root")
    if not root:
        raise DataError("quantizing an ONNX file needs --data-root for calibration images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = contract.provenance.get("layout")
        protocol = cfg.protocol or contract.provenance.get("protocol") or ("fer2013" if layout == "fer2013" else None)
        manifest = discover(root, protocol, label_mode=contract.provenance.get("label_mode") if protocol == "ferplus" else None)
    if manifest.classes != list(contract.classes):
        raise DataError(f"the model's classes {list(contract.classes)} differ from the data's {manifest.classes}")
    data = {s: load_split(manifest, s, contract.channels, contract.input_size) for s in manifest.splits}
    fp32_path = out / "model.onnx"
    shutil.copyfile(source, fp32_path)
    if not contract.class_prior:  # a file exported before the decision rule: the prior of its training split
        sampler, where = training_sampler(contract.provenance)
        report["notes"].append(f"class_prior: the training split as sampler '{sampler}' showed it ({where})")
        prior = training_prior(data["train"].labels, contract.num_classes, sampler, data["train"].targets)
        proto = onnx.load(str(fp32_path))
        set_contract(proto, contract.replace(class_prior=prior))
        save_onnx_atomic(proto, fp32_path)
    report["decision_rule"] = {"onnx fp32": _calibrate_onnx(fp32_path, data["val"], cfg.threads)}
    fp32_row = _onnx_row("onnx fp32", fp32_path, data, timed=not cfg.int8, threads=cfg.threads)
    report["artefacts"].append(fp32_row)
    code = _int8(cfg, fp32_path, data, out, report, fp32_row) if cfg.int8 else 0
    _reliability_plot(report, out)
    write_report(out, report, final_dir)
    _print_summary(report)
    return code


def training_sampler(provenance: dict) -> tuple[str, str]:
    """The fer-train sampler a model was trained with, and where that was found: its contract, its run's
    config.json, or the shipped recipe that writes its run; else "random" (a file exported before contracts
    recorded it, with neither beside it)."""
    if "sampler" in provenance:
        return provenance["sampler"], "its contract"
    run = Path(provenance.get("source_checkpoint", "")).parent
    config = run / "config.json"
    if run.name and config.is_file():
        return json.loads(config.read_text()).get("sampler", "random"), str(config)
    from fer_models import MODELS_DIR

    for recipe in sorted((MODELS_DIR / "recipes").glob("*.toml")):
        options = load_recipe(recipe, TrainConfig, "train")
        if run.name and options.get("name") == run.name:
            return options.get("sampler", "random"), f"the recipe {recipe.name}, which writes {run.name}"
    return "random", "not recorded: the label frequencies"


def train_config(cfg: ExportConfig, source: dict, **stage: object) -> TrainConfig:
    """A stage's TrainConfig: the source checkpoint's data protocol and selection metric, the stage's own settings,
    then --train-option."""
    saved = source.get("train_args", {})
    values: dict = {"protocol": saved.get("protocol"), "label_mode": saved.get("label_mode"), "seed": cfg.seed,
                    "monitor": saved.get("monitor", TrainConfig.monitor),
                    "no_progress": cfg.no_progress, "threads": cfg.threads, **stage}  # fmt: skip
    if cfg.distill_from:  # the student (or the pruned model's fine-tune) learns from the teacher, not from labels alone
        values.update(teacher=[cfg.distill_from], kd_alpha=cfg.kd_alpha, kd_temperature=cfg.kd_temperature)
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for item in cfg.train_option:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--train-option {item!r}: give KEY=VALUE with a fer-train option name (e.g. batch_size=64)")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return TrainConfig(**values)


def _distill(cfg: ExportConfig, out: Path, report: dict) -> Path:
    teacher = load_checkpoint(cfg.distill_from)
    root = cfg.data_root or teacher.get("manifest", {}).get("root")
    if not root:
        raise DataError("distillation needs --data-root")
    common = {"data_root": root, "arch": cfg.arch, "arch_arg": list(cfg.arch_arg), "epochs": cfg.epochs,
              "out_dir": str(out)}  # fmt: skip
    _train_stage(cfg, out / "student_kd", train_config(cfg, teacher, **common, name="student_kd"), "student training")
    report["paths"]["student_checkpoint"] = str(out / "student_kd" / "best.pt")
    if cfg.compare_baseline:
        alone = train_config(cfg, teacher, **common, name="student_alone")
        alone.teacher = None
        _train_stage(cfg, out / "student_alone", alone, "baseline student training")
        kd_m = json.loads((out / "student_kd" / "metrics.json").read_text())
        alone_m = json.loads((out / "student_alone" / "metrics.json").read_text())
        report["distillation"] = {
            split: {"kd": {k: kd_m[split][k] for k in ("accuracy", "macro_f1")},
                    "alone": {k: alone_m[split][k] for k in ("accuracy", "macro_f1")}}
            for split in ("val", "test") if split in kd_m
        }  # fmt: skip
    return out / "student_kd" / "best.pt"


def _train_stage(cfg: ExportConfig, run_dir: Path, train: TrainConfig, what: str) -> None:
    """One training run inside the export; with --resume a finished run is kept and a started one continued."""
    if cfg.resume and _finished(run_dir):
        print(f"fer-export: {what}: finished earlier, kept ({run_dir})")
        return
    if cfg.resume and (run_dir / "last.pt").exists():
        print(f"fer-export: {what}: resuming from {run_dir / 'last.pt'}")
        fit(train, resume=str(run_dir / "last.pt"))
        return
    fit(train)


def _finished(run_dir: Path) -> bool:
    metrics = run_dir / "metrics.json"
    return metrics.exists() and json.loads(metrics.read_text()).get("complete", False)


def _prune(cfg: ExportConfig, state, model, contract, data, out: Path, report: dict):
    before_macs, before_params = count_flops_params(model, contract)
    pruned = prune_channels(model, contract, ratio=cfg.prune, flops_speedup=cfg.prune_flops, steps=cfg.prune_steps)
    after_macs, after_params = count_flops_params(pruned, contract)
    pruned_state = {**{k: v for k, v in state.items() if k not in ("format", "format_version", "optimizer", "scheduler",
                                                                       "scaler", "ema_state_dict")},  # fmt: skip
                    "state_dict": pruned.state_dict(), "pruned": True, "epoch": 0, "history": []}
    init_path = out / "pruned_init.pt"
    save_checkpoint(pruned_state, init_path)
    row = _torch_row("pruned (no fine-tune)", pruned, contract, data)
    report["artefacts"].append(row)
    ckpt = init_path
    if cfg.finetune_epochs > 0:
        root = cfg.data_root or state.get("manifest", {}).get("root")
        finetune = train_config(cfg, state, init=str(init_path), data_root=root, epochs=cfg.finetune_epochs,
                           lr=cfg.finetune_lr, warmup_epochs=0.0, out_dir=str(out), name="pruned_finetune")  # fmt: skip
        _train_stage(cfg, out / "pruned_finetune", finetune, "fine-tuning the pruned model")
        ckpt = out / "pruned_finetune" / "best.pt"
        ft_model, _ = model_from_checkpoint(load_checkpoint(ckpt))
        report["artefacts"].append(_torch_row("pruned + fine-tuned", ft_model, contract, data))
    report["pruning"] = {
        "ratio": cfg.prune, "flops_target": cfg.prune_flops, "macs_before": before_macs, "macs_after": after_macs,
        "params_before": before_params, "params_after": after_params, "flops_reduction": before_macs / after_macs,
    }  # fmt: skip
    print(f"fer-export: pruned MACs {before_macs / 1e6:.1f}M -> {after_macs / 1e6:.1f}M "
          f"({before_macs / after_macs:.2f}x), params {before_params} -> {after_params}")  # fmt: skip
    return ckpt, pruned


def _print_summary(report: dict) -> None:
    for row in report["artefacts"]:
        parts = [row["name"].ljust(22)]
        for split in ("val", "test"):
            if split in row:
                parts.append(f"{split} acc {row[split]['accuracy']:.4f} F1 {row[split]['macro_f1']:.4f}")
        if row.get("file_kb"):
            parts.append(f"{row['file_kb']} KB, {row['latency_ms']:.3f} ms")
        print(" | ".join(parts))
    if report.get("ratios"):
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))


if __name__ == "__main__":
    sys.exit(main())
