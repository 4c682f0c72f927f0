"""Console entry points that work in a runtime-only install: without the [train] extra they say what to install."""

from __future__ import annotations

import sys

from fer_runtime.entry import RUNTIME_NEEDS
from fer_runtime.entry import run_entry as run_runtime_entry

# top-level modules of the [train] extra
TRAIN_MODULES = {"torch", "torchvision", "timm", "onnx", "onnxscript", "sklearn", "PIL", "tqdm", "matplotlib",
                 "torch_pruning"}


TRAIN_NEEDS = {
    **RUNTIME_NEEDS,
    "onnxruntime": "needs ONNX Runtime: pip install 'fer-toolchain[cpu,train]' (or [gpu,train] for onnxruntime-gpu)",
    **dict.fromkeys(TRAIN_MODULES, "needs the training extra: pip install 'fer-toolchain[train]'"),
}


def run_entry(module: str, prog: str) -> int:
    """Import ``module`` and run its ``main``; a missing training (or runtime) dependency is one line and exit code 2."""
    return run_runtime_entry(module, prog, TRAIN_NEEDS)


def train() -> None:
    sys.exit(run_entry("fer_train.train", "fer-train"))


def evaluate() -> None:
    sys.exit(run_entry("fer_train.evaluate", "fer-eval"))
