"""fer-train --init from an exported fp32 ONNX file: the registry model with the file's weights, trainable as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fer_export.onnx_export import export_onnx  # noqa: E402
from fer_export.quantize import FaceCalibrationReader, quantize_int8  # noqa: E402
from fer_runtime.contract import ModelContract, read_onnx_contract  # noqa: E402
from fer_train.augment import normalize  # noqa: E402
from fer_train.checkpoint import CheckpointError  # noqa: E402
from fer_train.models import create_model  # noqa: E402
from fer_train.onnx_init import model_from_onnx, refit_batchnorm  # noqa: E402
from fer_train.train import main as train_main  # noqa: E402

CLASSES = ("angry", "happy", "sad")
KWARGS = {"width": 0.125, "depths": [1, 2, 1, 1]}


def trained_like(seed: int = 0) -> torch.nn.Module:
    """A registry model whose BatchNorms hold statistics and affine weights far from the identity, as a trained one's."""
    torch.manual_seed(seed)
    model = create_model("vgg", 3, 1, **KWARGS)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_like()
    contract = ModelContract(classes=CLASSES, temperature=1.7, class_prior=(0.5, 0.3, 0.2), prior_correction=0.4,
                             provenance={"model": {"name": "vgg", "kwargs": KWARGS}})
    path = export_onnx(model, contract, tmp_path_factory.mktemp("m") / "model.onnx")
    return model, path


def images(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 48, 48), dtype=np.uint8))


def test_the_loaded_model_computes_what_the_file_and_its_source_compute(exported):
    source, path = exported
    model, contract, where = model_from_onnx(str(path))
    x = normalize(images(), contract.mean, contract.std)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), atol=1e-4)
    assert where == path and contract.classes == CLASSES
    # the export's calibration and decision rule are fitted again when the fine-tune is exported
    assert contract.temperature == 1.0 and contract.class_prior == () and contract.prior_correction == 0.0


def batch_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output with its BatchNorms normalising by the batch, as in a training step (dropout off)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.train()
        bn.momentum = 0.0  # running statistics untouched
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for bn, m in zip(bns, momentum):
            bn.eval()
            bn.momentum = m


def test_refit_batchnorm_keeps_the_function_and_trains_from_real_statistics(exported):
    _, path = exported
    model, contract, _ = model_from_onnx(str(path))
    train_images = images(512, seed=1)
    x = normalize(train_images, contract.mean, contract.std)
    with torch.no_grad():
        before = model(x)
    folded_in_training = batch_statistics(model, x)
    refit_batchnorm(model, train_images, contract)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4)
    # a training step on these images normalises by their own statistics: the refitted model computes the same there,
    # the identity BatchNorms of the folded file do not
    assert torch.allclose(batch_statistics(model, x), after, atol=1e-3)
    assert not torch.allclose(folded_in_training, before, atol=1e-1)


def test_an_int8_file_and_a_file_without_its_architecture_are_one_error(exported, tmp_path):
    _, path = exported
    contract = read_onnx_contract(path)
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx", FaceCalibrationReader(images(16).numpy(), contract))
    with pytest.raises(CheckpointError, match="INT8 file"):
        model_from_onnx(str(int8))
    bare = export_onnx(trained_like(), ModelContract(classes=CLASSES), tmp_path / "bare.onnx")
    with pytest.raises(CheckpointError, match="registry architecture"):
        model_from_onnx(str(bare))
    with pytest.raises(CheckpointError, match="no such file"):
        model_from_onnx(str(tmp_path / "absent.onnx"))


def test_fer_train_init_from_onnx_starts_where_the_file_is_and_records_it(exported, tree_factory, tmp_path):
    import hashlib

    _, path = exported
    root = tree_factory("train-val-test", per_class=8, seed=2)
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "ft", "--init", str(path), "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--threads", "1", "--amp", "off", "--degrade", "0.5"]
    assert train_main(args) == 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    init = config["contract"]["provenance"]["init"]
    assert init == {"file": "model.onnx", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "classes": "classes kept angry, happy, sad; new none; dropped none"}
    assert config["arch"] == "vgg" and config["degrade"] == 0.5


def test_fer_train_init_refuses_a_file_that_takes_other_input(tree_factory, tmp_path, capsys):
    contract = ModelContract(classes=CLASSES, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3,
                             provenance={"model": {"name": "vgg", "kwargs": KWARGS}})
    torch.manual_seed(0)
    path = export_onnx(create_model("vgg", 3, 3, **KWARGS).eval(), contract, tmp_path / "colour.onnx")
    root = tree_factory("train-val-test", per_class=4, seed=2)
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "x", "--init", str(path), "--epochs", "1",
            "--no-progress", "--threads", "1"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init takes 3-channel 48x48 input; this run decodes 1-channel" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_resumed_run_is_rebuilt_from_its_checkpoint_not_from_its_init_file(exported, tree_factory, tmp_path):
    """The init file may be replaced after the run starts (the shipped file it fine-tunes is what it replaces)."""
    import shutil

    _, path = exported
    init = tmp_path / "init.onnx"
    shutil.copy(path, init)
    root = tree_factory("train-val-test", per_class=6, seed=3)
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "ft", "--init", str(init), "--epochs", "2",
            "--batch-size", "8", "--no-progress", "--threads", "1", "--amp", "off"]
    assert train_main([*args, "--stop-after", "1"]) == 0
    recorded = json.loads((tmp_path / "ft" / "config.json").read_text())["contract"]["provenance"]["init"]
    other = ModelContract(classes=CLASSES, provenance={"model": {"name": "vgg", "kwargs": {"width": 0.25}}})
    export_onnx(create_model("vgg", 3, 1, width=0.25).eval(), other, init)  # another architecture under the same name
    assert train_main(["--resume", str(tmp_path / "ft" / "last.pt")]) == 0
    from fer_train.checkpoint import contract_of, load_checkpoint

    state = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert state["epoch"] == 2 and state["model"]["kwargs"] == KWARGS
    assert contract_of(state).provenance["init"] == recorded
