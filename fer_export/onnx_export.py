"""PyTorch -> ONNX with the model contract in the metadata, checked against PyTorch after export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from fer_runtime.backends import load_model
from fer_runtime.contract import METADATA_KEY, ModelContract
from fer_runtime.errors import FerError, first_line
from fer_runtime.outputs import atomic_path

MAX_RELATIVE_DIFF = 1e-3  # fp32 ORT against PyTorch: float rounding is ~1e-6 of the logits
MIN_AGREEMENT = 0.999


class ExportError(FerError, RuntimeError):
    """Export produced a model that does not behave like its source."""


def set_contract(model_proto: onnx.ModelProto, contract: ModelContract) -> None:
    props = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(props)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()


def save_onnx_atomic(model_proto: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))


def export_onnx(model: nn.Module, contract: ModelContract, path: str | Path, opset: int = 17) -> Path:
    """Export with a dynamic batch axis and ``fer_contract`` metadata; atomic."""
    path = Path(path)
    model = model.eval().cpu()
    h, w = contract.input_size
    dummy = torch.zeros(2, contract.channels, h, w)
    with atomic_path(path) as tmp:  # torch writes the raw graph here; the file with its contract replaces it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"], opset_version=opset,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                )
            except Exception as exc:  # the exporter raises many types, with the whole graph in the message
                raise ExportError(f"ONNX export of {type(model).__name__} failed: {first_line(exc, 300)}") from None
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        set_contract(proto, contract.replace(output="logits", layers=special_layers(model, proto)))
        onnx.save(proto, str(tmp))
    return path


def _onnx_scope(module_path: str, op: str) -> str:
    """torch.onnx's node name for a module: '/features/features.0/features.0.0/Conv' for 'features.0.0'."""
    parts = module_path.split(".")
    return "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + f"/{op}"


def special_layers(model: nn.Module, proto: onnx.ModelProto) -> dict[str, str]:
    """The first convolution and the classifier as ONNX node names, found from the network's modules."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    nodes = {n.name for n in proto.graph.node}
    found = {}
    for role, modules, ops in (("first_conv", convs[:1], ("Conv",)), ("classifier", linears[-1:], ("Gemm", "MatMul"))):
        for module in modules:
            name = next((_onnx_scope(module, op) for op in ops if _onnx_scope(module, op) in nodes), None)
            if name:
                found[role] = name
    return found


def parity_check(model: nn.Module, onnx_path: str | Path, images_u8: np.ndarray, min_agreement: float = MIN_AGREEMENT) -> dict:
    """Compare ONNX Runtime with PyTorch on real images; raise if top-1 agreement is too low."""
    session = load_model(onnx_path, threads=0, provider="cpu")
    contract = session.contract
    model = model.eval().cpu()
    max_diff, scale, agree, total = 0.0, 0.0, 0, 0
    for i in range(0, len(images_u8), 256):
        x = contract.normalize(images_u8[i : i + 256])
        ort_out = session.run(x)
        with torch.no_grad():
            torch_out = model(torch.from_numpy(x)).numpy()
        max_diff = max(max_diff, float(np.abs(ort_out - torch_out).max()))
        scale = max(scale, float(np.abs(torch_out).max()))
        agree += int((ort_out.argmax(1) == torch_out.argmax(1)).sum())
        total += len(x)
    result = {"images": total, "max_abs_logit_diff": max_diff, "top1_agreement": agree / max(total, 1)}
    if result["top1_agreement"] < min_agreement or max_diff > MAX_RELATIVE_DIFF * max(scale, 1.0):
        raise ExportError(
            f"ONNX Runtime and PyTorch agree on {result['top1_agreement']:.4%} of {total} images "
            f"(need {min_agreement:.1%}); max logit difference {max_diff:.4g} (at most {MAX_RELATIVE_DIFF:g} of the "
            f"largest logit, {scale:.4g}): the graph computes something else"
        )
    return result
