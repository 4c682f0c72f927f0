"""The ONNX Runtime backend: an ``.onnx`` file with its ``fer_contract``, run by an ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.contract import ContractError, ModelContract, contract_from_session
from fer_runtime.decision import prior_correction_for
from fer_runtime.errors import first_line
from fer_runtime.model import ModelBackend, check_output_by_running
from fer_runtime.providers import CPU, ProviderChoice, captured_stderr, check_started, import_onnxruntime, resolve

# ORT moves an INT8 model's first QuantizeLinear above a max pool that follows a float first conv, so
# the pool runs on uint8 NCHW, a plain loop (VGG w0.375 depths 1-1-2-2: 0.451 -> 0.309 ms with this
# off). The move only relocates the same Q, so outputs are bit-identical either way.
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class OnnxModel(ModelBackend):
    """Loads an ONNX classifier and its ``fer_contract``; returns class probabilities.

    ``provider``: ``--provider``'s value or a resolved ``ProviderChoice`` (default auto: CUDA only where a device
    answers); ``providers``: ORT's provider list as is (export and its checks pin the CPU). ``self.provider`` says
    what runs the model; a provider asked for by name that does not start is a ``ProviderError``. ``prior``: the
    decision rule (``fer_runtime.decision.PRIOR_CHOICES``): the model's own, the training prior, or a balanced one.
    """

    suffixes = (".onnx",)

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None,
                 provider: str | ProviderChoice | None = None, prior: str = "model") -> None:
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
                                                    disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as exc:
            raise ContractError(f"{self.path} is not a readable ONNX model: {first_line(exc)}") from None
        self.provider = check_started(choice, self.session.get_providers(), "".join(log))
        self.contract: ModelContract = contract_from_session(self.session, self.path)
        check_graph(self.session, self.contract, self.path)
        self.prior_correction = prior_correction_for(self.contract, prior)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs (logits or probabilities per the contract)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def param_count(self) -> int | None:
        """The weights in the graph (an INT8 file's int8 weights, not its scales and zero points); None without the
        ``onnx`` package."""
        try:
            import onnx
        except ImportError:
            return None
        graph = onnx.load(str(self.path)).graph
        return int(sum(int(np.prod(t.dims)) for t in graph.initializer
                       if not t.name.endswith(("_scale", "_zero_point")) and int(np.prod(t.dims)) > 1))


def check_graph(session, contract: ModelContract, path: Path) -> None:
    """The contract against the graph's own inputs and outputs, once at load: one image input N x C x H x W whose
    static sizes match channels and input_size, and a first output N x K with K the number of classes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ContractError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a classifier takes one "
                            "image batch")
    shape, kind = inputs[0].shape, inputs[0].type
    if kind != "tensor(float)":
        raise ContractError(f"{path}: the input is {kind}, not float32 (tensor(float))")
    if len(shape) != 4:
        raise ContractError(f"{path}: the input has shape {shape}; an image batch is N x C x H x W")
    if isinstance(shape[1], int) and shape[1] != contract.channels:
        raise ContractError(f"{path}: contract channels {contract.channels} does not fit the graph's input {shape}")
    if any(isinstance(g, int) and g != d for g, d in zip(shape[2:], contract.input_size)):
        raise ContractError(f"{path}: contract input_size {list(contract.input_size)} does not fit the graph's input {shape}")
    out = outputs[0].shape
    if len(out) != 2:
        raise ContractError(f"{path}: the output has shape {out}; a classifier gives N x classes")
    if isinstance(out[1], int) and out[1] != contract.num_classes:
        raise ContractError(f"{path}: contract classes lists {contract.num_classes} classes but the graph gives {out[1]} "
                            "outputs")
    if not isinstance(out[1], int):
        # a graph whose class count is not static: one blank image tells it (the input is bounded by the contract)
        check_output_by_running(lambda x: session.run(None, {session.get_inputs()[0].name: x})[0], contract, path)
