"""ONNX -> OpenVINO IR (``pip install 'fer-toolchain[openvino]'``): the ONNX file as OpenVINO's runtime reads it (an
INT8 QDQ file stays INT8), weights kept in fp32 (no fp16 compression), the contract in the IR's ``rt_info``."""

from __future__ import annotations

from pathlib import Path

from fer_export.onnx_export import ExportError
from fer_runtime.contract import METADATA_KEY, read_onnx_contract
from fer_runtime.errors import first_line
from fer_runtime.openvino_model import import_openvino


def ir_from_onnx(onnx_path: Path, xml_path: Path) -> Path:
    """``onnx_path`` as ``xml_path`` and the ``.bin`` beside it, carrying the ONNX file's contract."""
    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises its own exception types for unsupported graphs
        raise ExportError(f"--format openvino: OpenVINO cannot convert {onnx_path.name}: {first_line(exc, 300)}") from None
    model.set_rt_info(read_onnx_contract(onnx_path).to_json(), METADATA_KEY)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path
