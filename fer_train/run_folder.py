"""The run folder and what goes in it besides checkpoints: the folder chosen and checked before any work, made once
data and model are known to work (config.json, the split manifest, the data report), the TensorBoard scalars of each
epoch, and the final report (metrics.json/.md and the plots)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fer_runtime.data import write_skipped_log
from fer_runtime.data.report import write_data_report
from fer_runtime.errors import OutputError
from fer_runtime.outputs import atomic_write_text, check_output_dir
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
from fer_train.config import TrainConfig
from fer_train.data_prep import PreparedData
from fer_train.engine import predict_logits, score_logits
from fer_train.metrics import metrics_table, plot_confusion_matrix, plot_curves
from fer_train.model_setup import BuiltModel
from fer_train.placement import Placement
from fer_train.qat import is_qat, prepare_qat
from fer_train.run_config import InvocationFlags


def run_dir_for(cfg: TrainConfig, flags: InvocationFlags) -> Path:
    """The run folder, checked before any work: writable, and never an existing run unless --overwrite, which replaces
    it only once the new run's data and model are known to work (``replace_old_run``)."""
    if flags.resume:
        run_dir = Path(flags.resume).resolve().parent
        check_output_dir(run_dir, "the run folder")
        return run_dir
    check_output_dir(cfg.out_dir)
    name = cfg.name or f"{cfg.arch.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not flags.overwrite and (run_dir / "cv_config.json").is_file():
            raise OutputError(f"{run_dir} holds a cross-validation (its runs are {run_dir}/fold1 ...): pick another "
                              "--name, or replace it with --overwrite")
        if not flags.overwrite:
            raise OutputError(f"{run_dir} already holds a run: pick another --name, continue it with --resume "
                              f"{run_dir / 'last.pt'}, or replace it with --overwrite")
    return run_dir


def replace_old_run(run_dir: Path, flags: InvocationFlags) -> None:
    """--overwrite: the old run goes now, as the new one starts, not before: a mistyped command keeps it."""
    if flags.overwrite and not flags.resume and run_dir.exists():
        shutil.rmtree(run_dir)


def make_run_folder(run_dir: Path, cfg: TrainConfig, flags: InvocationFlags, data: PreparedData, built: BuiltModel,
                    placement: Placement) -> None:
    """The folder with config.json (the options, this invocation's flags, what auto resolved to), the split manifest,
    the list of skipped files and the data report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data.manifest.save(run_dir / "split_manifest.json")
    n_skipped = write_skipped_log(run_dir / "skipped_files.txt", data.decoded)
    if n_skipped:
        print(f"fer-train: {n_skipped} unreadable images skipped, listed in {run_dir / 'skipped_files.txt'}")
    config = {**asdict(cfg), **asdict(flags)}
    config.update(amp_resolved=placement.amp, device_resolved=str(placement.device), world_size=placement.world,
                  contract=built.contract.to_dict())
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
    if data.report is not None:
        write_data_report(data.report, run_dir)


class TensorBoard:
    """Each epoch's scalars in the run's tb/ folder: one writer (one events file) per sitting, opened at its first
    epoch and flushed after each; nothing where the tensorboard package is not installed."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "tb"
        self.writer = None
        self.available = True

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def add(self, record: dict) -> None:
        if self.writer is None and self.available:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.available = False
                return
            self.writer = SummaryWriter(str(self.folder))
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()


def final_report(run_dir: Path, data: PreparedData, built: BuiltModel, placement: Placement, results: dict,
                 history: list[dict]) -> dict:
    """best.pt scored on val and test (selection never looked at test); metrics.json/.md and the plots."""
    final_path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else None
    best_model = model_from_checkpoint(load_checkpoint(final_path))[0] if final_path else built.for_eval()
    if is_qat(built.model):
        prepare_qat(best_model)  # scored as it was selected: with the INT8 rounding
    best_model.to(placement.device)
    results = {"checkpoint": str(final_path) if final_path else None, **results, "notes": data.manifest.notes}
    rows: list[dict] = []
    for split in ("val", "test"):
        if split in data.tensors:
            # in fp32, as fer-eval and fer-export score it and the exported files run: the per-epoch validation in
            # the training precision (bf16 autocast on a CPU with native bf16) differs by a few images
            images, labels = data.tensors[split]
            logits = predict_logits(best_model, images, built.contract, placement.device, amp="off")
            results[split], _ = score_logits(logits, labels, list(built.contract.classes))
            rows += prediction_rows(split, data.decoded[split].paths, labels, logits, built.contract.classes)
    write_reports(run_dir, results, history)
    write_predictions(run_dir / PREDICTIONS, rows)
    for split in ("val", "test"):
        if split in results:
            print(f"{split}: accuracy {results[split]['accuracy']:.4f} macro-F1 {results[split]['macro_f1']:.4f} "
                  f"({results[split]['num_samples']} images)")
    print(f"fer-train: results in {run_dir}")
    return results


PREDICTIONS = "predictions.csv"
PREDICTION_FIELDS = ["split", "file", "label", "predicted", "p_label", "p_predicted"]


def prediction_rows(split: str, files: list[str], labels: torch.Tensor, logits: torch.Tensor,
                    classes: tuple[str, ...]) -> list[dict]:
    """One row an image: its file (below the data root), label, predicted class and the model's probability of each."""
    probs = torch.softmax(logits.float(), 1).numpy()
    pred = probs.argmax(1)
    return [{"split": split, "file": f, "label": classes[y], "predicted": classes[p], "p_label": f"{pr[y]:.4f}",
             "p_predicted": f"{pr[p]:.4f}"} for f, y, p, pr in zip(files, labels.tolist(), pred, probs)]


def write_predictions(path: Path, rows: list[dict], fields: list[str] = PREDICTION_FIELDS) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def write_reports(run_dir: Path, results: dict, history: list[dict]) -> None:
    """metrics.json (what ``fer_train.run_status`` reads), metrics.md, the confusion matrix and the curves."""
    atomic_write_text(run_dir / "metrics.json", json.dumps(results, indent=2))
    lines = [f"# Run {run_dir.name}", ""]
    for split in ("val", "test"):
        if split in results:
            lines += [f"## {split}", "", metrics_table(results[split]), ""]
    atomic_write_text(run_dir / "metrics.md", "\n".join(lines))
    split = "test" if "test" in results else "val"
    plot_confusion_matrix(results[split], run_dir / "confusion_matrix.png", title=f"{split}: accuracy "
                          f"{results[split]['accuracy']:.4f}, macro-F1 {results[split]['macro_f1']:.4f}")
    if history:
        plot_curves(history, run_dir / "curves.png", results.get("best", {}).get("metric"))
