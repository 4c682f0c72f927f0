"""An ONNX Runtime session that knows its model's contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.contract import ContractError, ModelContract, contract_from_session
from fer_runtime.providers import CPU, ProviderChoice, captured_stderr, check_started, import_onnxruntime, resolve

# ORT moves an INT8 model's first QuantizeLinear above a max pool that follows a float first conv, so
# the pool runs on uint8 NCHW, a plain loop (VGG w0.375 depths 1-1-2-2: 0.451 -> 0.309 ms with this
# off). The move only relocates the same Q, so outputs are bit-identical either way.
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class OnnxModel:
    """Loads an ONNX classifier and its ``fer_contract``; returns class probabilities.

    ``provider``: ``--provider``'s value or a resolved ``ProviderChoice`` (default auto: CUDA only where a device
    answers); ``providers``: ORT's provider list as is (export and its checks pin the CPU). ``self.provider`` says
    what runs the model; a provider asked for by name that does not start is a ``ProviderError``.
    """

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None,
                 provider: str | ProviderChoice | None = None):  # fmt: skip
        ort = import_onnxruntime()

        self.path = Path(path)
        if not self.path.is_file():
            raise ContractError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if providers:
            choice = ProviderChoice("given", tuple(providers))
        else:
            choice = provider if isinstance(provider, ProviderChoice) else resolve(provider or "auto")
        try:
            # a provider other than the CPU that fails to start makes ORT print errors and fall back: caught here
            with captured_stderr(enabled=choice.providers != (CPU,)) as log:
                self.session = ort.InferenceSession(str(self.path), options, providers=list(choice.providers),
                                                    disabled_optimizers=DISABLED_OPTIMIZERS)  # fmt: skip
        except Exception as exc:
            raise ContractError(f"{self.path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
        self.provider = check_started(choice, self.session.get_providers(), "".join(log))
        self.contract: ModelContract = contract_from_session(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs (logits or probabilities per the contract)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: softmax(logits / the contract's temperature)."""
        return calibrated_probabilities(self.run(batch), self.contract.output, self.contract.temperature)

    def raw_outputs(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> the model's raw outputs N x K."""
        outs = [self.run(self.contract.normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.contract.num_classes), np.float32)

    def predict_pixels(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> calibrated probabilities N x K."""
        c = self.contract
        return calibrated_probabilities(self.raw_outputs(images, batch_size), c.output, c.temperature)


def calibrated_probabilities(out: np.ndarray, kind: str = "logits", temperature: float = 1.0) -> np.ndarray:
    """A model's raw output (logits, or probabilities) -> softmax(logits / temperature), float32."""
    out = np.asarray(out, dtype=np.float32)
    if kind == "probabilities":
        if temperature == 1.0:
            return out
        out = np.log(np.clip(out, 1e-12, None))
    out = out / np.float32(temperature)
    out = out - out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out
