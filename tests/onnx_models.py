"""Tiny ONNX classifiers built with ``onnx.helper``: runtime tests need no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.contract import METADATA_KEY, ModelContract


def tiny_classifier(path: Path, contract: ModelContract, seed: int = 0) -> Path:
    """Conv 3x3 stride 2 -> ReLU -> global average pool -> Gemm: a real network with the contract's shapes."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    c, k, hidden = contract.channels, contract.num_classes, 8
    weights = {
        "conv_w": rng.normal(0, 0.5, (hidden, c, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, hidden).astype(np.float32),
        "fc_w": rng.normal(0, 0.5, (k, hidden)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, k).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], name="first_conv", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="classifier", transB=1),
    ]
    return _save(path, "tiny", nodes, weights, contract)


def _save(path: Path, name: str, nodes: list, weights: dict[str, np.ndarray], contract: ModelContract) -> Path:
    """The graph N x C x H x W "input" -> N x K "logits" with the contract in its metadata, checked and saved."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = contract.input_size
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", contract.channels, h, w])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", contract.num_classes])]
    graph = helper.make_graph(nodes, name, inputs, outputs, [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def brightness_classifier(path: Path, contract: ModelContract, slopes=(-4.0, 0.0, 4.0), offsets=(0.0, 1.5, 0.0)) -> Path:
    """logits = slopes * mean(normalised input) + offsets: dark faces are the first class, bright ones the last, and
    the middle the rest; the labels of a brightness ramp are known in advance."""
    from onnx import helper

    c, k = contract.channels, contract.num_classes
    weights = {"fc_w": np.tile(np.asarray(slopes, np.float32)[:, None] / c, (1, c)),
               "fc_b": np.asarray(offsets, np.float32)}
    assert weights["fc_w"].shape == (k, c)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="classifier", transB=1)]
    return _save(path, "brightness", nodes, weights, contract)



def bars_classifier(path: Path, contract: ModelContract) -> Path:
    """A linear classifier that reads tests/conftest.py's bars: class k's logit is the mean normalised brightness of
    band k (rows 16k to 16k+16 of 48, the middle half of the columns). Right on clear bars; on faint bars in noise its
    answers vary from image to image, and can be worked out by hand."""
    from onnx import helper

    (h, w), k = contract.input_size, contract.num_classes
    band = h // k
    weights = np.zeros((k, contract.channels, h, w), np.float32)
    for c in range(k):
        weights[c, :, c * band : (c + 1) * band, w // 4 : 3 * w // 4] = 1.0
    weights /= weights[0].sum()
    tensors = {"fc_w": weights.reshape(k, -1), "fc_b": np.zeros(k, np.float32)}
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="classifier", transB=1)]
    return _save(path, "bars", nodes, tensors, contract)
