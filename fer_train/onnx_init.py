"""``--init`` from an exported fp32 ONNX file (or a shipped model's name): its registry architecture, its weights.

The exported graph folds each BatchNorm into the convolution before it. Loaded back, every such BatchNorm starts as
the identity (bias only); ``refit_batchnorm`` then gives each one the statistics of its input on training images,
so it still computes the same function in evaluation and normalises as it did in training when fine-tuning starts.
The loaded model is checked against ONNX Runtime on the same input before it is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ModelContract, read_onnx_contract
from fer_runtime.engine import SHIPPED_MODELS
from fer_train.augment import normalize
from fer_train.checkpoint import CheckpointError
from fer_train.models import create_model

SHIPPED = tuple(SHIPPED_MODELS)  # their fp32 files: NAME.onnx beside the INT8 file fer-run uses
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
AGREEMENT_ATOL = 1e-3  # logits: float32 rounding of the folded and unfolded forms, far below any real mismatch


def is_onnx_init(init: str) -> bool:
    return init in SHIPPED or init.lower().endswith(".onnx")


def onnx_init_path(init: str) -> Path:
    """A shipped model's fp32 file, or the path given."""
    if init in SHIPPED:
        from fer_models import MODELS_DIR

        return MODELS_DIR / f"{init}.onnx"
    return Path(init)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_from_onnx(init: str) -> tuple[nn.Module, ModelContract, Path]:
    """The registry model named in the file's contract, holding the file's weights (BatchNorms as identities), its
    contract with the export's calibration and decision rule cleared (export fits them again), and the file."""
    import onnx
    from onnx import numpy_helper

    path = onnx_init_path(init)
    if not path.is_file():
        raise CheckpointError(f"--init {init}: no such file {path}")
    contract = read_onnx_contract(path)
    spec = contract.provenance.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"--init {path}: its contract does not name a registry architecture (provenance.model)")
    graph = onnx.load(str(path)).graph
    if any(node.op_type in QUANTIZED_OPS for node in graph.node):
        raise CheckpointError(f"--init {path} is an INT8 file: give the fp32 .onnx exported beside it")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    model = create_model(spec["name"], num_classes=contract.num_classes, in_chans=contract.channels,
                         **spec.get("kwargs", {}))
    convs = [node for node in graph.node if node.op_type == "Conv"]
    _load_weights(model, convs, weights, path)
    model.eval()
    _check_against_onnx(model, path, contract)
    clean = contract.replace(temperature=1.0, class_prior=(), prior_correction=0.0, layers={})
    return model, clean, path


def _load_weights(model: nn.Module, convs: list, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Graph convolutions in order onto the model's (each with the BatchNorm that follows it); every other parameter
    by its own name."""
    modules = list(model.modules())
    torch_convs = [(i, m) for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if len(torch_convs) != len(convs):
        raise CheckpointError(f"--init {path}: {len(convs)} convolutions in the graph, {len(torch_convs)} in the model")
    done: set[int] = set()
    for (i, conv), node in zip(torch_convs, convs):
        w = weights.get(node.input[1])
        b = weights.get(node.input[2]) if len(node.input) > 2 else None
        if w is None or w.shape != conv.weight.shape:
            raise CheckpointError(f"--init {path}: convolution {node.name} does not fit the model's {tuple(conv.weight.shape)}")
        bn = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else None
        with torch.no_grad():
            conv.weight.copy_(w)
            bias = torch.zeros(w.shape[0]) if b is None else b
            if bn is not None:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                done.update(id(t) for t in (bn.weight, bn.bias))
            elif conv.bias is not None:
                conv.bias.copy_(bias)
            elif b is not None and b.abs().max() > 0:
                raise CheckpointError(f"--init {path}: convolution {node.name} has a bias the model has no place for")
        done.update(id(t) for t in (conv.weight, conv.bias) if t is not None)
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        if id(tensor) in done or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        if name not in weights or weights[name].shape != tensor.shape:
            raise CheckpointError(f"--init {path}: no initializer {name} of shape {tuple(tensor.shape)} in the graph")
        with torch.no_grad():
            tensor.copy_(weights[name])


def _check_against_onnx(model: nn.Module, path: Path, contract: ModelContract) -> None:
    from fer_runtime.backends import load_model

    x = np.random.default_rng(0).normal(size=(4, contract.channels, *contract.input_size)).astype(np.float32)
    expected = load_model(path, provider="cpu").run(x)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    if not np.allclose(got, expected, atol=AGREEMENT_ATOL, rtol=1e-3):
        raise CheckpointError(f"--init {path}: the loaded model disagrees with the file (max logit difference "
                              f"{np.abs(got - expected).max():.3g}); its graph does not map onto the registry model")


@torch.no_grad()
def refit_batchnorm(model: nn.Module, images_u8: torch.Tensor, contract: ModelContract, limit: int = 4096) -> None:
    """Each BatchNorm's running statistics from its input on ``images_u8`` (up to ``limit``), with its affine
    weights set so the model computes exactly what it did: a folded model that trains like an unfolded one."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    moments = {bn: torch.zeros(3, bn.num_features, dtype=torch.float64) for bn in bns}  # count, sum, sum of squares

    def record(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].transpose(0, 1).flatten(1).double()
        moments[module] += torch.stack([torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64),
                                        x.sum(1), (x * x).sum(1)])

    hooks = [bn.register_forward_pre_hook(record) for bn in bns]
    model.eval()
    try:
        n = min(len(images_u8), limit)
        for i in range(0, n, 256):
            model(normalize(images_u8[i : min(i + 256, n)], contract.mean, contract.std))
    finally:
        for h in hooks:
            h.remove()
    for bn in bns:
        count, total, squares = moments[bn]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        # the function now: x * a + c; kept with the new statistics: (x - mean) / sqrt(var + eps) * w + b = x * a + c
        a = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        c = bn.bias.double() - a * bn.running_mean.double()
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_((a * torch.sqrt(var + bn.eps)).float())
        bn.bias.copy_((c + a * mean).float())
