"""``ModelBackend``: what every loaded model offers, whatever runs it (ONNX Runtime, TFLite, ...).

A backend is one class: it opens a file (``accepts`` says which), reads the model's contract and decision rule, and
runs a normalised batch (``run``). Everything else a caller needs (raw outputs of uint8 images, probabilities under
the decision rule) is built here on ``run``, the same for every backend. ``fer_runtime.backends.load_model`` picks
the backend for a file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.decision import decision_probabilities
from fer_runtime.errors import first_line
from fer_runtime.providers import CPU, ProviderChoice, ProviderError

# what a backend that runs on the CPU only reports as its provider
CPU_ONLY = ProviderChoice("cpu", (CPU,))


def import_runtime(module: str, extra: str, suffix: str):
    """The runtime module a backend needs, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ProviderError(f"a {suffix} file runs on {module.split('.')[0]}, which is not installed: "
                            f"pip install 'fer-toolchain[{extra}]'") from None


def cpu_runtime(runtime: str, provider: str | ProviderChoice | None, suffix: str) -> ProviderChoice:
    """The provider of a backend whose runtime runs on the CPU only: ``--provider`` auto or cpu, anything else refused
    in one line. ``runtime`` names it in the "running on" line (``fer_runtime.providers.describe``)."""
    request = provider.request if isinstance(provider, ProviderChoice) else (provider or "auto")
    if request not in ("auto", "cpu"):
        raise ProviderError(f"--provider {request}: a {suffix} file runs on {runtime} (auto or cpu); use the .onnx "
                            "file for ONNX Runtime's providers")
    return ProviderChoice(request, (CPU,), f"chosen by the file ({suffix})", runtime=runtime)


def check_output_by_running(run: Callable[[np.ndarray], np.ndarray], contract: ModelContract, path: Path) -> None:
    """One blank image through ``run`` (normalised N x C x H x W -> raw outputs): the model runs on the contract's input
    and gives one output per contract class."""
    x = np.zeros((1, contract.channels, *contract.input_size), np.float32)
    try:
        out = run(x)
    except Exception as exc:  # the runtimes raise several unrelated types
        raise ContractError(f"{path} does not run on a {contract.input_size} input: {first_line(exc)}") from None
    if out.ndim != 2 or out.shape[1] != contract.num_classes:
        raise ContractError(f"{path}: contract classes lists {contract.num_classes} classes but the model gives "
                            f"{out.shape} outputs")


class ModelBackend(ABC):
    """A model file that runs.

    A subclass is constructed as ``Backend(path, threads=0, provider=None, prior="model")`` (``threads``: intra-op
    threads, 0 the backend's default; ``provider``: ``--provider``'s value, ignored by a backend that runs on one device
    only; ``prior``: the decision rule, ``fer_runtime.decision.PRIOR_CHOICES``). It sets ``path``, ``contract``,
    ``prior_correction`` (the tau the model is read under) and ``provider`` (what runs it), and implements ``run``.
    """

    # the file suffixes this backend opens (lower case); ``accepts`` may look closer
    suffixes: ClassVar[tuple[str, ...]] = ()

    path: Path
    contract: ModelContract
    prior_correction: float
    provider: ProviderChoice

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether this backend opens ``path``: by its suffix unless a backend says otherwise."""
        return path.suffix.lower() in cls.suffixes

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs N x K (logits or probabilities, as the contract says)."""

    def raw_outputs(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> the model's raw outputs N x K."""
        outs = [self.run(self.contract.normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.contract.num_classes), np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Normalised batch -> class probabilities under the decision rule (temperature, then tau)."""
        return decision_probabilities(self.run(batch), self.contract, self.prior_correction)

    def predict_pixels(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> probabilities under the decision rule, N x K."""
        return decision_probabilities(self.raw_outputs(images, batch_size), self.contract, self.prior_correction)

    def size_bytes(self) -> int:
        """The size of the model's files on disk."""
        return self.path.stat().st_size

    def param_count(self) -> int | None:
        """The model's weight count, where the backend can read it from the file (None: it cannot)."""
        return None
