from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from fer_export.cli import main as export_main
from fer_export.onnx_export import export_onnx
from fer_export.quantize import FaceCalibrationReader, quantize_int8
from fer_runtime.contract import ModelContract
from fer_train import qat
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
from fer_train.models import create_model
from fer_train.qat import fake_quant_activation, fake_quant_weight, is_qat, prepare_qat
from fer_train.train import main as train_main

CONTRACT = ModelContract(classes=("angry", "happy", "sad"), provenance={"source": "test"})


def test_weights_round_to_int8_per_output_channel_and_pass_gradients_straight():
    torch.manual_seed(0)
    w = (torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1, 1)).requires_grad_()
    q = fake_quant_weight(w)
    step = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    levels = q.detach() / step
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 127 + 1e-4
    assert (q.detach() - w.detach()).abs().le(step / 2 + 1e-6).all()
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_activations_round_to_256_levels_that_hold_zero():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 3, 8, 8) * 4 + 1).requires_grad_()
    q = fake_quant_activation(x)
    assert len(torch.unique(q.detach())) <= 256
    assert torch.equal(q.detach()[x.detach() == 0], torch.zeros(int((x == 0).sum())))  # ReLU zeros stay exact
    assert (q.detach() - x.detach()).abs().max() <= x.detach().max() / 255 / 2 + 1e-6
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_prepare_qat_keeps_the_weights_and_their_names():
    model = create_model("vgg", 3, 1, width=0.125)
    keys = list(model.state_dict())
    prepare_qat(model)
    assert is_qat(model) and list(model.state_dict()) == keys
    plain = create_model("vgg", 3, 1, width=0.125)
    plain.load_state_dict(model.state_dict())
    assert not is_qat(plain) and is_qat(copy.deepcopy(model))  # the EMA copy rounds too


def test_the_rounding_points_and_grids_are_onnx_runtime_int8s(tmp_path, monkeypatch):
    """Calibrated by min/max on the batch the QAT forward sees, ORT's INT8 file rounds the same tensors on the same
    grids (scales within 5%: ORT's ranges come from the fp32 model, the QAT forward's from its rounded layers)."""
    torch.manual_seed(0)
    model = create_model("vgg", 3, 1, width=0.25, depths=[1, 2, 2, 2], pool=2)
    images = np.random.default_rng(0).integers(0, 255, (16, 1, 48, 48), dtype=np.uint8)
    x = CONTRACT.normalize(images)
    with torch.no_grad():  # batch-norm statistics of these images, so activations and logits are of order one
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(torch.from_numpy(x))
    model.eval()
    fp32 = export_onnx(model, CONTRACT, tmp_path / "m.onnx")
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", FaceCalibrationReader(images, CONTRACT, batch_size=16), "minmax")
    proto = onnx.load(str(int8))
    values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    ort_grids = [(float(values[n.input[1]]), int(values[n.input[2]])) for n in proto.graph.node if n.op_type == "QuantizeLinear"]

    grids = []

    def recording(t: torch.Tensor, grid_of: torch.Tensor | None = None) -> torch.Tensor:
        ref = (t if grid_of is None else grid_of).detach()
        lo, hi = min(float(ref.min()), 0.0), max(float(ref.max()), 0.0)
        grids.append(((hi - lo) / 255, round(-lo / ((hi - lo) / 255))))
        return fake_quant_activation(t, grid_of)

    monkeypatch.setattr(qat, "fake_quant_activation", recording)
    with torch.no_grad():
        prepare_qat(model)(torch.from_numpy(x))

    def distinct(seq):  # max-pool, average-pool and flatten outputs stay on their input's grid
        return [g for i, g in enumerate(seq) if i == 0 or abs(g[0] / seq[i - 1][0] - 1) > 1e-6]

    ours, theirs = distinct(grids), distinct(ort_grids)
    assert len(ours) == len(theirs) == 1 + 7 + 1 + 1  # input, 7 conv ReLUs, hidden ReLU, logits
    for (scale, zero), (ort_scale, ort_zero) in zip(ours, theirs):
        assert abs(scale / ort_scale - 1) < 0.05, (ours, theirs)
        assert abs(zero * scale - ort_zero * ort_scale) < 0.05 * 255 * ort_scale, (ours, theirs)  # range's low end


def test_fer_train_qat_fine_tunes_a_run_into_a_plain_checkpoint(tree_factory, tmp_path, monkeypatch):
    from fer_train import model_setup, run_folder

    trained_with_rounding = []
    for module in (model_setup, run_folder):  # the model trained, and best.pt as the final report scores it
        monkeypatch.setattr(module, "prepare_qat", lambda m: trained_with_rounding.append(prepare_qat(m)) or m)
    root = tree_factory("train-val-test", per_class=16)
    common = ["--data-root", str(root), "--out-dir", str(tmp_path), "--arch", "vgg", "--arch-arg", "width=0.125",
              "--batch-size", "8", "--no-progress", "--threads", "1", "--amp", "off", "--epochs", "1"]
    assert train_main([*common, "--name", "fp32"]) == 0
    assert not trained_with_rounding
    assert train_main([*common[:4], *common[8:], "--name", "qat", "--init", str(tmp_path / "fp32" / "best.pt"), "--qat"]) == 0
    assert trained_with_rounding and all(is_qat(m) for m in trained_with_rounding)  # trained and scored with it
    assert json.loads((tmp_path / "qat" / "config.json").read_text())["qat"] is True
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "qat" / "best.pt"))
    assert not is_qat(model)  # the weights, as any run's: fer-export builds and quantizes a plain model
    assert export_main(["--ckpt", str(tmp_path / "qat" / "best.pt"), "--int8", "--calib-size", "16", "--out-dir",
                        str(tmp_path), "--name", "e"]) == 0
    assert (tmp_path / "e" / "model.int8.onnx").is_file()
