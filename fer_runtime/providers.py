"""Which ONNX Runtime execution provider runs a model: ``--provider auto|cpu|cuda|...`` of fer-run and fer-bench.

- ``auto``: CUDA when this onnxruntime has it *and* a CUDA device answers, else the CPU. onnxruntime-gpu lists CUDA
  on machines without a GPU too, and asking it for CUDA there prints an error and runs on the CPU anyway, so auto
  asks only where a device exists, and says in one line what it chose.
- a short name (``cpu``, ``cuda``, ``tensorrt``, ``openvino``, ``coreml``, ``dml``, ...) or ORT's own name
  (``CUDAExecutionProvider``): exactly that provider, the CPU behind it for the operators it lacks. A request that
  cannot be met (not in this onnxruntime, or it did not start) is a ``ProviderError``: one line, exit code 2.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fer_runtime.errors import FerError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# short names for the providers onnxruntime builds ship; any other listed provider is named by its lower-cased stem
SHORT_NAMES = {
    "cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider", "qnn": "QNNExecutionProvider", "webgpu": "WebGpuExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider", "cann": "CANNExecutionProvider", "azure": "AzureExecutionProvider",
}
NO_RUNTIME = (
    "no ONNX Runtime is installed: pip install 'fer-toolchain[cpu]' (or 'fer-toolchain[gpu]' for NVIDIA GPUs; README, Install)"
)
GPU_INSTALL = "pip install 'fer-toolchain[gpu]' (onnxruntime-gpu; README, Install)"
PROVIDER_HELP = ("execution provider: auto (CUDA when a CUDA device and onnxruntime-gpu are here, else the CPU), cpu, "
                 "cuda, or another that onnxruntime lists (tensorrt, openvino, coreml, dml, ...)")


class ProviderError(FerError, ValueError):
    """An execution provider that was asked for and cannot be had."""


@dataclass(frozen=True)
class ProviderChoice:
    request: str  # what was asked for: "auto", "cuda", ...
    providers: tuple[str, ...]  # what the session is given, in order of preference
    reason: str = ""  # why auto chose what it chose
    runtime: str = ""  # a runtime other than ONNX Runtime, as the "running on" line names it ("OpenVINO 2026.4.1 (CPU)")

    @property
    def name(self) -> str:
        return short_name(self.providers[0])


def short_name(provider: str) -> str:
    for short, full in SHORT_NAMES.items():
        if full == provider:
            return short
    return provider.removesuffix("ExecutionProvider").lower()


def import_onnxruntime():
    """The ``onnxruntime`` module, or a ProviderError naming the extras when neither build is installed."""
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError(NO_RUNTIME) from None
    return onnxruntime


def available() -> list[str]:
    """The providers this onnxruntime build has (not whether their device exists)."""
    return list(import_onnxruntime().get_available_providers())


def cuda_device_count() -> int:
    """CUDA devices the driver reports, asked of libcuda directly (no torch, no ORT error when there is none)."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", ctypes.util.find_library("cuda")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def resolve(request: str = "auto") -> ProviderChoice:
    """``--provider`` -> the providers to give ONNX Runtime; ProviderError when the request cannot be met here."""
    have = available()
    request = (request or "auto").strip()
    if request.lower() == "auto":
        if CUDA not in have:
            return ProviderChoice("auto", (CPU,), "this onnxruntime has no CUDA")
        if cuda_device_count() < 1:
            return ProviderChoice("auto", (CPU,), "onnxruntime-gpu is installed but no CUDA device answers")
        return ProviderChoice("auto", (CUDA, CPU), "a CUDA device and onnxruntime-gpu are here")
    wanted = SHORT_NAMES.get(request.lower(), request)
    if wanted not in have:
        listed = {short_name(p): p for p in have}
        wanted = listed.get(request.lower(), wanted)
    if wanted not in have:
        names = ", ".join(["auto", *(short_name(p) for p in have)])
        hint = f"; for CUDA: {GPU_INSTALL}" if wanted == CUDA else ""
        raise ProviderError(f"--provider {request}: this onnxruntime has no {wanted} (it has: {names}){hint}")
    if wanted in (CUDA, TENSORRT) and cuda_device_count() < 1:
        raise ProviderError(f"--provider {request}: no CUDA device answers on this machine (no driver, or no GPU "
                            "visible: check nvidia-smi and CUDA_VISIBLE_DEVICES); --provider cpu runs on the CPU")
    if wanted == CPU:
        return ProviderChoice(request, (CPU,))
    # TensorRT hands what it cannot build to CUDA (ORT's documented order), then everything else to the CPU
    behind = (CUDA, CPU) if wanted == TENSORRT and CUDA in have else (CPU,)
    return ProviderChoice(request, (wanted, *behind))


def check_started(choice: ProviderChoice, started: list[str], log: str = "") -> ProviderChoice:
    """The session's own providers against the choice: ORT falls back to the CPU when a provider fails to start.
    An explicit request that fell back is a ProviderError; auto becomes the CPU with the reason."""
    first = choice.providers[0]
    if first in started:
        return choice
    why = _first_error(log) or "see onnxruntime's log"
    if choice.request.lower() != "auto":
        raise ProviderError(f"--provider {choice.request}: onnxruntime could not start {first} ({why})")
    return ProviderChoice("auto", (CPU,), f"{short_name(first)} did not start ({why})")


def describe(choice: ProviderChoice) -> str:
    """One line: what runs the model, and for auto why."""
    line = f"running on {choice.runtime or f'{choice.name} ({choice.providers[0]})'}"
    return line + (f"; --provider auto: {choice.reason}" if choice.request == "auto" and choice.reason else "")


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "error" in line.lower() or "fail" in line.lower():
            return line.split("] ", 1)[-1].strip()[:200]
    return ""


@contextmanager
def captured_stderr(enabled: bool = True) -> Iterator[list[str]]:
    """The process's stderr (file descriptor 2, where ORT's C++ logger writes) caught while the block runs; the text
    lands in the yielded list. Used around session creation on a non-CPU provider, whose failures ORT prints."""
    out: list[str] = []
    if not enabled:
        yield out
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
