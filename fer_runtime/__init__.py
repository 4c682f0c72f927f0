"""Real-time facial expression recognition with ONNX Runtime and OpenCV (no torch).

The Python API is ``FaceExpressionRecognizer`` (README, "Python API"); the contract helpers describe a model's
classes and preprocessing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# ONNX Runtime 1.29+ on Linux and macOS writes a device id (~/.cache/Microsoft) and a session file ($TMPDIR/.ses) and
# uploads usage events unless this is set before it loads: every command and the API import fer_runtime first
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from fer_runtime.contract import ContractError, ModelContract, read_onnx_contract

if TYPE_CHECKING:
    from fer_runtime.api import FaceExpressionRecognizer

__all__ = ["FaceExpressionRecognizer", "ContractError", "ModelContract", "read_onnx_contract", "__version__"]


def __getattr__(name: str):
    # the API loads OpenCV and the detector: only when asked for, so that `import fer_runtime.contract` stays light
    if name == "FaceExpressionRecognizer":
        from fer_runtime.api import FaceExpressionRecognizer

        return FaceExpressionRecognizer
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'fer_runtime' has no attribute {name!r}")


def version() -> str:
    """The installed fer-toolchain's version (``--version`` of every command)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fer-toolchain")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"
