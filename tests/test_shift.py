from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from fer_runtime.contract import ModelContract
from fer_train.checkpoint import load_checkpoint
from fer_train.evaluate import main as eval_main
from fer_train.shift import estimate_input_blur, sharpness
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
