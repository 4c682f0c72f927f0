"""Console entry points that work in a runtime-only install: without the [train] extra they say what to install."""

from __future__ import annotations

import importlib
import sys

# top-level modules of the [train] extra
TRAIN_MODULES = {"torch", "torchvision", "timm", "onnx", "onnxscript", "sklearn", "PIL", "tqdm", "matplotlib",
                 "torch_pruning"}


def run_entry(module: str, prog: str) -> int:
    """Import ``module`` and run its ``main``; a missing training dependency is one line and exit code 2."""
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "onnxruntime":
            print(f"{prog}: error: {prog} needs ONNX Runtime: pip install 'fer-toolchain[cpu,train]' (or [gpu,train] "
                  "for onnxruntime-gpu)", file=sys.stderr)
            return 2
        if (exc.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"{prog}: error: {prog} needs the training extra (no module {exc.name!r}): "
              "pip install 'fer-toolchain[train]'", file=sys.stderr)
        return 2
    return target.main()


def train() -> None:
    sys.exit(run_entry("fer_train.train", "fer-train"))


def evaluate() -> None:
    sys.exit(run_entry("fer_train.evaluate", "fer-eval"))
