from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut

from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.deblur import blur_deconvolve, wiener_deconvolve
from fer_train.checkpoint import load_checkpoint
from fer_train.evaluate import main as eval_main
from fer_train.shift import estimate_input_blur, sharpness, spectral_blur_sigma
from fer_train.train import main as train_main

from .conftest import make_image


def _faces(n: int, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = [make_image(i % 3, rng) for i in range(n)]
    if sigma:
        imgs = [cv2.GaussianBlur(im, (0, 0), sigma) for im in imgs]
    return np.stack(imgs)[:, None]


def test_blur_estimate_matches_the_degradation():
    sharp, blurred = _faces(200, 0), _faces(200, 2.0, seed=1)
    assert sharpness(sharp) > 3 * sharpness(blurred)
    sigma, info = estimate_input_blur(blurred, sharp)
    assert 1.25 <= sigma <= 2.75 and info["ratio"] > 2
    sigma_same, _ = estimate_input_blur(sharp, _faces(200, 0, seed=2))
    assert sigma_same == 0.0


def test_contract_conditioning_is_applied_in_preprocess():
    c = ModelContract(classes=("a", "b"), input_blur=1.5)
    crop = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    expected = (cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 1.5, borderType=cv2.BORDER_REFLECT) / 255 - 0.5) / 0.5
    assert np.allclose(c.preprocess([crop])[0, 0], expected, atol=1e-4)
    plain = ModelContract(classes=("a", "b"))
    assert np.allclose(plain.preprocess([crop])[0, 0], (crop / 255 - 0.5) / 0.5, atol=1e-5)


def test_training_detects_blurred_train_split(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=8)
    for f in (root / "train").rglob("*.png"):
        cv2.imwrite(str(f), cv2.GaussianBlur(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (0, 0), 2.5))
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "b", "--epochs", "1", "--model", "vgg",
            "--model-arg", "width=0.125", "--no-progress", "--amp", "off"]  # fmt: skip
    assert train_main(args) == 0
    assert "sharper than training images" in capsys.readouterr().err
    blur = load_checkpoint(tmp_path / "b" / "best.pt")["contract"]["input_blur"]
    assert blur >= 1.5
    assert train_main([*args[:5], "c", *args[6:], "--input-blur", "0"]) == 0
    assert load_checkpoint(tmp_path / "c" / "best.pt")["contract"]["input_blur"] == 0.0


def test_eval_on_the_train_split_does_not_blur_it_again(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=8)
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "b", "--epochs", "1", "--model", "vgg",
            "--model-arg", "width=0.125", "--no-progress", "--amp", "off", "--input-blur", "2.0"]  # fmt: skip
    assert train_main(args) == 0
    state = load_checkpoint(tmp_path / "b" / "best.pt")
    state["contract"]["input_blur"] = 0.0
    torch.save(state, tmp_path / "unblurred.pt")
    capsys.readouterr()
    assert eval_main(["--ckpt", str(tmp_path / "b" / "best.pt"), "--split", "train", "--out-dir", str(tmp_path / "e1")]) == 0
    assert "scored without the contract's input_blur" in capsys.readouterr().err
    assert eval_main(["--ckpt", str(tmp_path / "unblurred.pt"), "--split", "train", "--out-dir", str(tmp_path / "e0")]) == 0
    assert eval_main(["--ckpt", str(tmp_path / "b" / "best.pt"), "--split", "val", "--out-dir", str(tmp_path / "v1")]) == 0
    assert eval_main(["--ckpt", str(tmp_path / "unblurred.pt"), "--split", "val", "--out-dir", str(tmp_path / "v0")]) == 0
    loss = {k: json.loads((tmp_path / k / f"eval_{'train' if k[0] == 'e' else 'val'}.json").read_text())["loss"]
            for k in ("e1", "e0", "v1", "v0")}  # fmt: skip
    assert loss["e1"] == loss["e0"]
    assert loss["v1"] != loss["v0"]  # other splits keep the conditioning


def test_spectral_fit_recovers_the_blur_sigma():
    sharp = _astronaut_crops(300)
    for sigma in (1.5, 3.0):
        blurred = np.stack([[cv2.GaussianBlur(ch, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for ch in im]
                            for im in sharp[:150]])  # fmt: skip
        assert abs(spectral_blur_sigma(blurred, sharp[150:]) - sigma) <= 0.25


def _astronaut_crops(n: int = 16) -> np.ndarray:
    gray = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(n):
        size = int(rng.integers(96, 200))
        top, left = (int(v) for v in rng.integers(0, 512 - size, 2))
        crops.append(cv2.resize(gray[top : top + size, left : left + size], (48, 48), interpolation=cv2.INTER_AREA))
    return np.stack(crops)[:, None]


def test_wiener_deconvolution_brings_back_blurred_detail_and_matches_the_inference_filter():
    sharp = _astronaut_crops()
    blurred = np.stack([[cv2.GaussianBlur(ch, (0, 0), 2.5, borderType=cv2.BORDER_REFLECT) for ch in im] for im in sharp])
    restored = wiener_deconvolve(blurred, 2.5, 3e-4)
    assert restored.dtype == np.uint8 and restored.shape == sharp.shape

    def error(x: np.ndarray) -> float:
        return float(np.abs(x.astype(np.float64) - sharp).mean())

    assert error(restored) < 0.7 * error(blurred)
    assert sharpness(restored) > 2 * sharpness(blurred)
    # the one-step inference filter turns sharp inputs into what training saw (deconvolved blurred images)
    inference = blur_deconvolve(sharp, 2.5, 3e-4)
    assert inference.dtype == np.float32
    assert float(np.abs(inference - restored).mean()) < 0.2 * error(blurred)
    assert len(wiener_deconvolve(sharp[:0], 2.5, 3e-4)) == 0


def test_contract_with_deconvolution_conditions_inputs_and_needs_a_new_reader():
    c = ModelContract(classes=("a", "b"), input_blur=2.0, input_deconv=1e-3)
    crop = _astronaut_crops(1)[0, 0]
    expected = (blur_deconvolve(crop[None, None], 2.0, 1e-3)[0, 0] / 255 - 0.5) / 0.5
    assert np.allclose(c.preprocess([crop])[0, 0], expected, atol=1e-5)
    assert c.to_dict()["version"] == 2 and c.replace(input_deconv=0.0).to_dict()["version"] == 1
    assert ModelContract.from_json(c.to_json()) == c
    with pytest.raises(ContractError, match="needs an input_blur"):
        ModelContract(classes=("a",), input_deconv=1e-3)
    with pytest.raises(ContractError, match="newer than this runtime"):
        ModelContract.from_dict({**c.to_dict(), "version": 3})


def test_training_with_deconvolution_records_it_and_students_inherit_it(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=8)
    for f in (root / "train").rglob("*.png"):
        cv2.imwrite(str(f), cv2.GaussianBlur(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (0, 0), 2.5))
    common = ["--data-root", str(root), "--out-dir", str(tmp_path), "--epochs", "1", "--model", "vgg",
              "--model-arg", "width=0.125", "--no-progress", "--amp", "off"]  # fmt: skip
    assert train_main([*common, "--name", "t", "--train-deconv", "1e-3"]) == 0  # sigma: auto, fitted to the spectra
    teacher = load_checkpoint(tmp_path / "t" / "best.pt")["contract"]
    assert 2.0 <= teacher["input_blur"] <= 3.0 and (teacher["input_deconv"], teacher["version"]) == (1e-3, 2)
    assert f"Wiener-deconvolved (sigma {teacher['input_blur']}, noise 0.001)" in capsys.readouterr().out
    assert train_main([*common, "--name", "s", "--teacher", str(tmp_path / "t" / "best.pt")]) == 0
    student = load_checkpoint(tmp_path / "s" / "best.pt")["contract"]
    assert (student["input_blur"], student["input_deconv"]) == (teacher["input_blur"], 1e-3)
    assert eval_main(["--ckpt", str(tmp_path / "t" / "best.pt"), "--split", "train", "--out-dir", str(tmp_path / "e")]) == 0


def test_deconvolution_without_a_blur_is_a_clear_error(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=4)
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "x", "--epochs", "1", "--model", "vgg",
            "--model-arg", "width=0.125", "--no-progress", "--amp", "off", "--train-deconv", "1e-3"]  # fmt: skip
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "--train-deconv needs blurred training images" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_inference_blur_picked_on_val_is_scored_and_exported_without_touching_the_training_view(
    tree_factory, tmp_path, capsys
):
    from fer_export.cli import main as export_main
    from fer_runtime.contract import read_onnx_contract
    from fer_train.shift import training_view, with_inference_blur

    root = tree_factory("train-val-test", per_class=8)
    for f in (root / "train").rglob("*.png"):
        cv2.imwrite(str(f), cv2.GaussianBlur(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (0, 0), 2.5))
    assert train_main(["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "t", "--epochs", "1",
                       "--model", "vgg", "--model-arg", "width=0.125", "--no-progress", "--amp", "off",
                       "--input-blur", "2.5", "--train-deconv", "1e-3"]) == 0  # fmt: skip
    ckpt = str(tmp_path / "t" / "best.pt")
    scored = {}
    for sigma in (None, "2.5", "4"):
        extra = [] if sigma is None else ["--input-blur", sigma]
        assert eval_main(["--ckpt", ckpt, "--split", "val", "--out-dir", str(tmp_path / "e"), *extra]) == 0
        m = json.loads((tmp_path / "e" / f"eval_val{'' if sigma is None else '_blur' + sigma}.json").read_text())
        scored[sigma] = (m["loss"], m["input_blur"])
    assert scored[None] == scored["2.5"] == (scored[None][0], [2.5])
    assert scored["4"][1] == [4.0] and scored["4"][0] != scored[None][0]
    capsys.readouterr()
    assert eval_main(["--ckpt", ckpt, "--split", "train", "--input-blur", "3", "--out-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "the train split is scored as trained" in err and err.count("\n") == 1
    assert eval_main(["--ckpt", ckpt, "--split", "val", "--input-blur", "11"]) == 2
    assert "input_blur must be in [0, 10]" in capsys.readouterr().err

    assert export_main([ckpt, "--int8", "--input-blur", "4", "--calib-size", "12", "--max-drop", "100",
                        "--out-dir", str(tmp_path), "--name", "x"]) == 0  # fmt: skip
    trained = load_checkpoint(ckpt)["contract"]
    images = _astronaut_crops(4)
    for name in ("model.onnx", "model.int8.onnx"):
        shipped = read_onnx_contract(tmp_path / "x" / name)
        assert (shipped.input_blur, shipped.input_deconv) == (4.0, 1e-3)
        assert shipped.provenance["trained_conditioning"] == {"input_blur": 2.5, "input_deconv": 1e-3}
        assert np.array_equal(training_view(images, shipped), wiener_deconvolve(images, 2.5, 1e-3))
    assert trained["input_blur"] == 2.5  # the checkpoint is untouched
    # an exported ONNX model can be given another blur without its checkpoint
    assert export_main([str(tmp_path / "x" / "model.onnx"), "--input-blur", "3", "--data-root", str(root),
                        "--out-dir", str(tmp_path), "--name", "y"]) == 0  # fmt: skip
    again = read_onnx_contract(tmp_path / "y" / "model.onnx")
    assert again.input_blur == 3.0 and again.provenance["trained_conditioning"]["input_blur"] == 2.5
    # a second change keeps the original training conditioning; sigma 0 switches inference conditioning off
    off = with_inference_blur(with_inference_blur(shipped, 3.0), 0.0)
    assert (off.input_blur, off.input_deconv) == (0.0, 0.0)
    assert np.array_equal(training_view(images, off), wiener_deconvolve(images, 2.5, 1e-3))
