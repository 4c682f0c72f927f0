"""INT8 static quantization with ONNX Runtime (QDQ, per-channel weights), file to file."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from fer_export.onnx_export import save_onnx_atomic, set_contract
from fer_runtime.contract import ModelContract, read_onnx_contract
from fer_runtime.errors import FerError

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class QuantizationError(FerError, RuntimeError):
    pass


class FaceCalibrationReader(CalibrationDataReader):
    """Feeds normalised face crops (uint8 N x C x H x W) to the calibrator in small batches."""

    def __init__(self, images_u8: np.ndarray, contract: ModelContract, input_name: str = "input", batch_size: int = 32):
        if len(images_u8) == 0:
            raise QuantizationError("calibration data is empty")
        # Equal batch shapes: ORT's histogram calibrators (entropy, percentile) stack them.
        batch_size = min(batch_size, len(images_u8))
        usable = len(images_u8) // batch_size * batch_size
        self.batches = [contract.normalize(images_u8[i : i + batch_size]) for i in range(0, usable, batch_size)]
        self.images = usable  # what calibrates: the rest of the last batch is left out
        self.input_name = input_name
        self._iter = iter(self.batches)

    def get_next(self) -> dict | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def stratified_sample(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of about ``size`` samples with every class in proportion (at least one each)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(size * len(idx) / len(labels))))
        picked.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def float_node_names(model_path: Path, keep_float: list[str], layers: dict[str, str] | None = None) -> list[str]:
    """Resolve 'first_conv', 'classifier', 'avg_pool' or explicit node names to nodes kept in float.

    'first_conv' and 'classifier' come from the contract's ``layers`` (recorded at export); an ONNX file
    made elsewhere, without them, falls back to the first Conv and the last Gemm/MatMul in node order.
    """
    graph = onnx.load(str(model_path)).graph
    present = {n.name for n in graph.node}
    layers = {k: v for k, v in (layers or {}).items() if v in present}
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    pools = [n.name for n in graph.node if n.op_type in ("AveragePool", "GlobalAveragePool")]
    names = []
    for item in keep_float:
        if item in ("first_conv", "classifier") and item in layers:
            names.append(layers[item])
        elif item == "first_conv" and convs:
            names.append(convs[0])
        elif item == "classifier" and heads:
            names.append(heads[-1])
        elif item == "avg_pool":
            names.extend(pools)
        elif item in {n.name for n in graph.node}:
            names.append(item)
        else:
            raise QuantizationError(f"--keep-float {item!r}: no such node (use first_conv, classifier or a node name)")
    return names


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer prints its histogram calibration steps (entropy, percentile) and logs notes through the root
    logger; fer-export reports what matters itself. Errors still raise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: CalibrationDataReader,
    method: str = "minmax",
    per_channel: bool = True,
    keep_float: list[str] | None = None,
) -> Path:
    """fp32 ONNX -> INT8 QDQ ONNX calibrated on ``calibration``; the contract is carried over."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {method!r}: {', '.join(CALIBRATION_METHODS)}")
    contract = read_onnx_contract(fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        excluded = float_node_names(prepped, keep_float or [], contract.layers)
        raw = Path(tmp) / "int8.onnx"
        extra = {"CalibMovingAverage": True} if method == "minmax" else {}
        with quiet_quantizer():
            quantize_static(
                str(prepped), str(raw), calibration, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_exclude=excluded, extra_options=extra,
            )
        proto = onnx.load(str(raw))
    set_contract(proto, contract)
    save_onnx_atomic(proto, int8_path)
    return int8_path
