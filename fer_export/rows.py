"""The export report's rows: each artefact's size and its scores on every split (PyTorch through fer-train's own
``evaluate``; ONNX files under their decision rule, with the raw argmax and the calibration beside it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_export.prune import count_flops_params
from fer_export.report import onnx_latency_ms
from fer_runtime.calibration import calibration_summary, reliability
from fer_runtime.contract import ModelContract
from fer_runtime.data import DecodedSplit
from fer_runtime.session import OnnxModel, decision_probabilities
from fer_train.engine import evaluate
from fer_train.metrics import classification_metrics

SCORED_SPLITS = ("val", "test")


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    m = classification_metrics(labels, probs.argmax(1), classes)
    m.pop("confusion_matrix", None)
    return m


def torch_row(label: str, model: nn.Module, contract: ModelContract, data: dict[str, DecodedSplit]) -> dict:
    """The PyTorch model's size and scores, from fer-train's own ``evaluate``."""
    macs, params = count_flops_params(model, contract)
    row = {"name": label, "params": params, "macs": macs}
    for split in SCORED_SPLITS:
        if split in data:
            images = torch.from_numpy(np.ascontiguousarray(data[split].images))
            metrics, _ = evaluate(model, images, torch.from_numpy(data[split].labels), contract, torch.device("cpu"))
            row[split] = {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "loss")}
    return row


def onnx_row(label: str, path: Path, data: dict[str, DecodedSplit], timed: bool = True, threads: int = 0) -> dict:
    """Scores and calibration on every split; ``timed=False`` when the caller times this file beside another."""
    model = OnnxModel(path, threads=threads, providers=["CPUExecutionProvider"])
    c = model.contract
    row = {"name": label, "file": str(path), "file_kb": round(path.stat().st_size / 1024, 1), "temperature": c.temperature,
           "prior_correction": c.prior_correction}  # fmt: skip
    if timed:
        row["latency_ms"] = onnx_latency_ms(path)[0]
    for split in SCORED_SPLITS:
        if split in data:
            row[split] = _onnx_scores(model, data[split])
    return row


def _onnx_scores(model: OnnxModel, split: DecodedSplit) -> dict:
    c = model.contract
    raw, labels = model.raw_outputs(split.images), split.labels
    # the figures under the shipped decision rule, and the raw argmax's (the training prior) beside them
    probs = decision_probabilities(raw, c)
    scores = score(probs, labels, list(c.classes))
    raw_argmax = score(decision_probabilities(raw, c, 0.0), labels, list(c.classes))
    scores["train_prior"] = {k: raw_argmax[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    scores["calibration"] = calibration_summary(raw, labels, c.temperature, c.output)
    scores["calibration"]["ece_decision_rule"] = reliability(probs, labels)["ece"]
    return scores
