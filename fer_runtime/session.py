"""An ONNX Runtime session that knows its model's contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.contract import ContractError, ModelContract, contract_from_session


def available_providers(prefer_cuda: bool = True) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    order = (["CUDAExecutionProvider"] if prefer_cuda else []) + ["CPUExecutionProvider"]
    return [p for p in order if p in have]


# ORT moves an INT8 model's first QuantizeLinear above a max pool that follows a float first conv, so
# the pool runs on uint8 NCHW, a plain loop (VGG w0.375 depths 1-1-2-2: 0.451 -> 0.309 ms with this
# off). The move only relocates the same Q, so outputs are bit-identical either way.
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class OnnxModel:
    """Loads an ONNX classifier and its ``fer_contract``; returns class probabilities."""

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None, prior: str = "model"):
        """``prior``: the decision rule (``PRIOR_CHOICES``): the model's own, the training prior, or a balanced one."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ContractError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or available_providers(),
                                                disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as exc:
            raise ContractError(f"{self.path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
        self.contract: ModelContract = contract_from_session(self.session, self.path)
        self.prior_correction = prior_correction_for(self.contract, prior)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs (logits or probabilities per the contract)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities under the decision rule: softmax(logits / temperature - tau * log(class prior))."""
        return decision_probabilities(self.run(batch), self.contract, self.prior_correction)

    def raw_outputs(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> the model's raw outputs N x K."""
        outs = [self.run(self.contract.normalize(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.contract.num_classes), np.float32)

    def predict_pixels(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 N x C x H x W (model colour order, model size) -> probabilities under the decision rule, N x K."""
        return decision_probabilities(self.raw_outputs(images, batch_size), self.contract, self.prior_correction)


# fer-run --prior / fer-bench --prior: the contract's own rule, the training prior (raw argmax), or a balanced prior
PRIOR_CHOICES = ("model", "train", "balanced")


def prior_correction_for(contract: ModelContract, prior: str) -> float:
    """The tau a ``--prior`` choice stands for with this model."""
    if prior not in PRIOR_CHOICES:
        raise ContractError(f"prior must be one of {', '.join(PRIOR_CHOICES)}, got {prior!r}")
    if prior == "balanced" and not contract.class_prior:
        raise ContractError("this model's contract records no class prior, so it cannot be balanced: use --prior model")
    return {"model": contract.prior_correction, "train": 0.0, "balanced": 1.0}[prior]


def decision_probabilities(out: np.ndarray, contract: ModelContract, prior_correction: float | None = None) -> np.ndarray:
    """Raw outputs -> the probabilities the decision rule reads: softmax(logits / T - tau * log(class prior)).

    ``prior_correction``: tau (None: the contract's own).
    """
    tau = contract.prior_correction if prior_correction is None else prior_correction
    shift = tau * np.log(np.asarray(contract.class_prior, np.float32)) if tau and contract.class_prior else None
    return calibrated_probabilities(out, contract.output, contract.temperature, shift)


def calibrated_probabilities(out: np.ndarray, kind: str = "logits", temperature: float = 1.0,
                             shift: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A model's raw output (logits, or probabilities) -> softmax(logits / temperature - shift), float32."""
    out = np.asarray(out, dtype=np.float32)
    if kind == "probabilities":
        if temperature == 1.0 and shift is None:
            return out
        out = np.log(np.clip(out, 1e-12, None))
    out = out / np.float32(temperature)
    if shift is not None:
        out = out - shift
    out = out - out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out
