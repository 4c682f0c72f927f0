"""The export report's rows: each artefact's size, its scores on every split and its latency (PyTorch through
fer-train's own ``evaluate``; ONNX files through the one scorer, ``fer_runtime.scoring``, and the one latency timer,
``fer_runtime.profiling.time_models``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_export.prune import count_flops_params
from fer_runtime.backends import load_model
from fer_runtime.contract import ModelContract
from fer_runtime.data import DecodedSplit
from fer_runtime.model import ModelBackend
from fer_runtime.profiling import percentiles, time_models
from fer_runtime.scoring import SplitScorer
from fer_train.engine import evaluate

SCORED_SPLITS = ("val", "test")


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
    model = load_model(path, threads=threads, provider="cpu")
    c = model.contract
    row = {"name": label, "file": str(path), "file_kb": round(path.stat().st_size / 1024, 1), "temperature": c.temperature,
           "prior_correction": c.prior_correction}
    if timed:
        row["latency_ms"] = latency_ms(path)[0]
    for split in SCORED_SPLITS:
        if split in data:
            row[split] = _onnx_scores(model, data[split])
    return row


def _onnx_scores(model: ModelBackend, split: DecodedSplit) -> dict:
    """The split's figures under the file's decision rule, flat, with the raw argmax's and the calibration beside."""
    scores = SplitScorer(model, model.contract.classes, split.labels).score(split.images)
    figures = {k: v for k, v in scores.quality.items() if k != "confusion_matrix"}
    return {**figures, "quality_train_prior": scores.quality_train_prior, "calibration": scores.calibration}


def latency_ms(*paths: Path, rounds: int = 10, calls: int = 30) -> list[float]:
    """Median latency of each model at batch 1 on one thread (CPU), the models timed interleaved."""
    models = {str(i): load_model(path, threads=1, provider="cpu") for i, path in enumerate(paths)}
    samples = time_models(models, 1, rounds=rounds, calls=calls, warmup=30)
    return [percentiles(samples[str(i)])["p50_ms"] for i in range(len(paths))]
