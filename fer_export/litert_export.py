"""ONNX -> TFLite through litert-torch (``pip install 'fer-toolchain[litert-export]'``; no TensorFlow).

The fp32 ``.onnx`` file is rebuilt as its registry model (``fer_train.onnx_init``) and converted by litert-torch at a
batch of one. INT8 quantizes what the ONNX INT8 file quantizes, on that file's own grids: int8 weights per channel and
int8 activations (PT2E on the calibration sample), each activation the ONNX file quantizes pinned to its scale and zero
point (the two paired by running both on the same images), and the first convolution and the input left in float where
the ONNX file keeps them so (``--keep-float first_conv``, the default); with ``--keep-float none`` both files are
full-integer. So the two INT8 files round alike and agree, rather than being two quantizations of one model (full-integer
against the default ONNX file: 98.85% top-1 on 2000 FER2013 validation crops). The contract goes into the TFLite
metadata (``fer_runtime.litert_model.with_metadata``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from fer_export.onnx_export import ExportError
from fer_runtime.contract import METADATA_KEY, ModelContract, read_onnx_contract
from fer_runtime.errors import first_line
from fer_runtime.litert_model import with_metadata
from fer_runtime.outputs import atomic_path
from fer_runtime.providers import captured_stderr
from fer_train.checkpoint import CheckpointError
from fer_train.onnx_init import model_from_onnx

MATCH_IMAGES = 4  # images both INT8 paths are run on to pair each torch observer with an ONNX tensor


def tflite_from_onnx(fp32_onnx: Path, path: Path, int8_onnx: Path | None = None,
                     calibration: np.ndarray | None = None) -> Path:
    """``fp32_onnx`` as a TFLite file at ``path`` carrying the contract of the ONNX file it stands for: fp32, or with
    ``int8_onnx`` and ``calibration`` (normalised N x C x H x W) full-integer INT8 rounded as that file rounds."""
    try:
        with _quiet():
            model, contract, _ = model_from_onnx(str(fp32_onnx))
    except CheckpointError as exc:
        raise ExportError(f"--format tflite: {exc}") from None
    sample = (torch.zeros(1, contract.channels, *contract.input_size),)
    try:
        with _quiet():
            if int8_onnx is None:
                edge = _convert(model.eval(), sample)
            else:
                edge = _convert_int8(model.eval(), contract, fp32_onnx, int8_onnx, calibration)
            content = edge.model_content()
    except Exception as exc:  # the converter raises many types, with the whole graph in the message
        raise ExportError(f"--format tflite: litert-torch cannot convert {fp32_onnx.name}: {first_line(exc, 300)}") from None
    carried = read_onnx_contract(int8_onnx or fp32_onnx)
    with atomic_path(path) as tmp:
        tmp.write_bytes(with_metadata(content, METADATA_KEY, carried.to_json().encode()))
    return path


def _convert(model: torch.nn.Module, sample: tuple, quant_config=None):
    import litert_torch

    return litert_torch.convert(model, sample, quant_config=quant_config)


def _convert_int8(model: torch.nn.Module, contract: ModelContract, fp32_onnx: Path, int8_onnx: Path,
                  calibration: np.ndarray):
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    sample = (torch.zeros(1, contract.channels, *contract.input_size),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(_minmax_config(pt2e_quantizer))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
    if _first_conv_is_float(int8_onnx):
        _unquantize_first_conv(prepared)
    _pin_onnx_ranges(prepared, fp32_onnx, int8_onnx, calibration[:MATCH_IMAGES])
    with torch.no_grad():
        for x in calibration:  # the converted graph takes one image: calibrate one at a time
            prepared(torch.from_numpy(x[None]))
    return _convert(quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), sample, QuantConfig(pt2e_quantizer=quantizer))


def _first_conv_is_float(int8_onnx: Path) -> bool:
    """Whether the ONNX INT8 file keeps its first convolution in float (``--keep-float first_conv``, the default): it
    then reads the graph input itself, not a dequantized copy."""
    graph = onnx.load(str(int8_onnx)).graph
    first = next((n for n in graph.node if n.op_type in ("Conv", "QLinearConv")), None)
    return first is not None and first.op_type == "Conv" and first.input[0] in {i.name for i in graph.input}


def _unquantize_first_conv(prepared: torch.nn.Module) -> None:
    """No observer on the graph input nor on the weight of the convolution that reads it: both stay float."""
    graph = prepared.graph
    first = next(n for n in graph.nodes if n.op == "call_function" and "conv" in str(n.target))
    for arg in first.args[:2]:
        if isinstance(arg, torch.fx.Node) and arg.op == "call_module" and arg.target.startswith("activation_post_process"):
            arg.replace_all_uses_with(arg.args[0])
            graph.erase_node(arg)
    prepared.recompile()


def _minmax_config(pt2e_quantizer):
    """litert-torch's static per-channel config with min/max activation observers: the ranges that matter are pinned
    to the ONNX file's, and the others (input, output) want the plain extremes, not a histogram search."""
    from torchao.quantization.pt2e import MinMaxObserver

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    minmax = MinMaxObserver.with_args(eps=2**-12)
    act_in = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=minmax)
    act_out = dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=minmax)
    return dataclasses.replace(config, input_activation=act_in, output_activation=act_out)


def _pin_onnx_ranges(prepared: torch.nn.Module, fp32_onnx: Path, int8_onnx: Path, images: np.ndarray) -> None:
    """Each activation observer whose tensor the ONNX INT8 file quantizes (the input too, where it does) returns that
    file's scale and zero point (uint8 zero point - 128: the same grid in int8)."""
    onnx_values = _onnx_quantized_tensors(fp32_onnx, int8_onnx, images)
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(
        args[0].detach().numpy().copy())) for name, module in prepared.named_children()
        if name.startswith("activation_post_process")]
    with torch.no_grad():
        for x in images:
            prepared(torch.from_numpy(x[None]))
    for hook in hooks:
        hook.remove()
    nodes = [n for n in prepared.graph.nodes if n.op == "call_module" and n.target.startswith("activation_post_process")]
    for name, values in seen.items():
        calls = len(values) // len(images)  # an observer shared by several tensors (a pool after a ReLU) sees each
        targets = [n for n in nodes if getattr(prepared, n.target) is getattr(prepared, name)]
        pinned = None
        for j in range(calls):
            found = next(((s, z) for value, s, z in onnx_values if _same(value, np.concatenate(values[j::calls]), z)), None)
            if found is None or found == pinned:
                continue
            observer = getattr(prepared, name) if pinned is None else copy.deepcopy(getattr(prepared, name))
            if pinned is not None:  # the ONNX file quantizes this tensor on a grid of its own (a pool's output)
                targets[j].target = f"{name}_{j}"
                setattr(prepared, targets[j].target, observer)
            params = (torch.tensor([found[0]], dtype=torch.float32), torch.tensor([found[1] - 128], dtype=torch.int32))
            observer.calculate_qparams = lambda params=params: params
            pinned = pinned or found
    prepared.recompile()


def _same(onnx_value: np.ndarray, torch_value: np.ndarray, zero: int) -> bool:
    """The same tensor, or (zero point 0: a grid from 0) the ONNX file's ReLU of it: that grid clips as the ReLU does."""
    if onnx_value.shape != torch_value.shape:
        return False
    atol = 1e-3 * max(1.0, float(np.abs(onnx_value).max()))
    return np.allclose(onnx_value, torch_value, atol=atol) or zero == 0 and np.allclose(onnx_value, np.maximum(torch_value, 0),
                                                                                          atol=atol)


def _onnx_quantized_tensors(fp32_onnx: Path, int8_onnx: Path, images: np.ndarray) -> list[tuple[np.ndarray, float, int]]:
    """(value on ``images``, scale, uint8 zero point) of every activation the INT8 file quantizes per tensor, the values
    read from the fp32 file's graph under the same tensor names."""
    import onnxruntime as ort

    graph = onnx.load(str(int8_onnx)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    params = {n.input[0]: (float(init[n.input[1]]), int(init[n.input[2]])) for n in graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in init and n.input[1] in init and len(n.input) > 2
              and init[n.input[1]].size == 1 and init[n.input[2]].dtype == np.uint8}
    fp32 = onnx.load(str(fp32_onnx))
    produced = {out for node in fp32.graph.node for out in node.output}
    graph_input = fp32.graph.input[0].name
    # the quantizer renames a graph output it quantizes ("logits" -> "logits_QuantizeLinear_Input")
    params = {n.removesuffix("_QuantizeLinear_Input") if n not in produced else n: v for n, v in params.items()}
    names = [n for n in params if n in produced]
    given = [(images, *params[graph_input])] if graph_input in params else []  # the input, where the file quantizes it
    have = {o.name for o in fp32.graph.output}
    fp32.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    session = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: images})))
    return [(outputs[n], *params[n]) for n in names] + given


@contextlib.contextmanager
def _quiet():
    """litert-torch prints its progress and absl notes (the latter from C++, on file descriptor 2); fer-export reports what
    matters itself. Errors still raise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()),
              captured_stderr()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
