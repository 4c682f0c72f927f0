"""``load_model``: the one way a model file is opened; the backend is picked by the file.

ONNX Runtime opens ``.onnx`` files, OpenVINO ``.xml`` IR files and LiteRT ``.tflite`` files (each runtime from its
extra, imported only when such a file is opened). Another backend is one ``ModelBackend`` subclass, registered with
``register_backend``: here for one that ships with the runtime, or by the package that defines it (fer-bench's
incumbent TFLite model registers itself in ``benchmarks.incumbent``, ahead of the LiteRT backend).
"""

from __future__ import annotations

from pathlib import Path

from fer_runtime.contract import ContractError
from fer_runtime.litert_model import LiteRtModel
from fer_runtime.model import ModelBackend
from fer_runtime.openvino_model import OpenVinoModel
from fer_runtime.providers import ProviderChoice
from fer_runtime.session import OnnxModel

BACKENDS: list[type[ModelBackend]] = []


def register_backend(backend: type[ModelBackend], first: bool = False) -> type[ModelBackend]:
    """Make ``load_model`` open the files ``backend.accepts``; backends are asked in the order they registered, a
    backend registered ``first`` (one for a few files of a suffix another backend opens) before all others."""
    if backend not in BACKENDS:
        BACKENDS.insert(0, backend) if first else BACKENDS.append(backend)
    return backend


for _backend in (OnnxModel, OpenVinoModel, LiteRtModel):
    register_backend(_backend)


def backend_for(path: str | Path) -> type[ModelBackend]:
    """The backend that opens ``path``: the first registered one that accepts it."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"model file not found: {path}")
    for backend in BACKENDS:
        if backend.accepts(path):
            return backend
    known = ", ".join(sorted({s for b in BACKENDS for s in b.suffixes}))
    raise ContractError(f"{path}: no backend opens this file (model files are {known})")


def load_model(path: str | Path, *, threads: int = 0, provider: str | ProviderChoice | None = None,
               prior: str = "model") -> ModelBackend:
    """The model in ``path``, opened by its backend: its contract, decision rule and ``run``.

    ``threads``: intra-op threads (0: the backend's default); ``provider``: ``--provider``'s value or a resolved
    ``ProviderChoice`` (default auto); ``prior``: the decision rule (``fer_runtime.decision.PRIOR_CHOICES``).
    Raises ``ContractError`` for a missing file, one no backend opens, or a model without a usable contract.
    """
    return backend_for(path)(path, threads=threads, provider=provider, prior=prior)
