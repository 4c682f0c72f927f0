"""The OpenVINO backend: an IR file (``.xml`` + ``.bin``) carrying its ``fer_contract`` in ``rt_info``, run by
OpenVINO on the CPU (``pip install 'fer-toolchain[openvino]'``). ``fer-export --format openvino`` writes such files."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from fer_runtime.contract import METADATA_KEY, ContractError, ModelContract
from fer_runtime.decision import prior_correction_for
from fer_runtime.errors import first_line
from fer_runtime.model import ModelBackend, check_output_by_running, cpu_runtime, import_runtime
from fer_runtime.providers import ProviderChoice


def import_openvino():
    """The ``openvino`` module, without its usage telemetry: importing openvino imports its converter, which sends an
    event to Google Analytics unless the user has opted out; with ``openvino_telemetry`` unimportable it takes its own
    stub instead. Nothing fer-toolchain runs goes online."""
    sys.modules.setdefault("openvino_telemetry", None)
    return import_runtime("openvino", "openvino", ".xml")


def read_ir_contract(model, path: Path) -> ModelContract:
    """The contract an IR carries in its ``rt_info`` (``fer_export.formats`` writes it there)."""
    if not model.has_rt_info(METADATA_KEY):
        raise ContractError(f"{path} has no '{METADATA_KEY}' in its rt_info: export it with fer-export --format openvino")
    return ModelContract.from_json(model.get_rt_info(METADATA_KEY).astype(str))


class OpenVinoModel(ModelBackend):
    """An OpenVINO IR classifier, compiled for the CPU in fp32 (no bf16 or fp16 hint: the ONNX file's arithmetic), with
    a dynamic batch as exported. ``threads``: OpenVINO's inference threads (0: its default). Each calling thread runs
    its own infer request: one request shared by threads hands them each other's outputs."""

    suffixes = (".xml",)

    def __init__(self, path: str | Path, threads: int = 0, provider: str | ProviderChoice | None = None,
                 prior: str = "model") -> None:
        ov = import_openvino()
        self.path = Path(path)
        self.provider = cpu_runtime(f"OpenVINO {ov.get_version().split('-')[0]} (CPU)", provider, ".xml")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as exc:
            raise ContractError(f"{self.path} is not a readable OpenVINO IR: {first_line(exc)}") from None
        self.contract = read_ir_contract(model, self.path)
        self.prior_correction = prior_correction_for(self.contract, prior)
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self._requests = threading.local()
        check_output_by_running(self.run, self.contract, self.path)

    def size_bytes(self) -> int:
        """The .xml and the .bin of weights beside it."""
        weights = self.path.with_suffix(".bin")
        return self.path.stat().st_size + (weights.stat().st_size if weights.is_file() else 0)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs (logits or probabilities per the contract)."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request.infer({0: np.ascontiguousarray(batch, np.float32)})[0].copy()
