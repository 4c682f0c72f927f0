"""Temperature scaling and the expected calibration error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_runtime.calibration import expected_calibration_error, fit_temperature, reliability
from fer_runtime.decision import calibrated_probabilities


def test_fit_temperature_recovers_the_temperature_that_made_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (20000, 5))
    p = calibrated_probabilities(true_logits)
    labels = np.asarray([rng.choice(5, p=row) for row in p])
    # a model 2.5x overconfident: its logits are the calibrated ones times 2.5
    assert fit_temperature(true_logits * 2.5, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.05)
    t = fit_temperature(true_logits * 2.5, labels)
    before = expected_calibration_error(calibrated_probabilities(true_logits * 2.5), labels)
    after = expected_calibration_error(calibrated_probabilities(true_logits * 2.5, temperature=t), labels)
    assert after < 0.02 < before


def test_ece_by_hand():
    # two bins used: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, 2 right)
    probs = np.asarray([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.asarray([0, 1, 0, 1])
    r = reliability(probs, labels, bins=15)
    assert r["ece"] == pytest.approx(0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.6 - 1.0))
    assert sum(b["count"] for b in r["bins"]) == 4


def test_a_fit_that_runs_to_the_end_of_its_range_keeps_the_models_own_scale(tiny_model_factory, capsys):
    """A few val images, all right (a small own-data set): the NLL falls all the way to T = 0.05, which would show
    every answer as 1.00. The export keeps T = 1 and says why."""
    pytest.importorskip("torch")
    from fer_export.calibrate import calibrate_onnx
    from fer_runtime.contract import read_onnx_contract
    from fer_runtime.data import DecodedSplit
    from fer_runtime.session import OnnxModel

    path = tiny_model_factory()
    images = np.random.default_rng(0).integers(0, 256, (24, 1, 48, 48), dtype=np.uint8)
    right = OnnxModel(path).raw_outputs(images).argmax(1)
    fit = calibrate_onnx(path, DecodedSplit(images, right, [f"{i}.png" for i in range(24)], []))
    assert fit["temperature"] == 1.0 and read_onnx_contract(path).temperature == 1.0
    assert "ran to the end of its range (0.05) on 24 val images (0 wrong)" in fit["note"]
    assert "fer-export: warning: tiny.onnx: the temperature fit ran to the end" in capsys.readouterr().err


def test_probability_outputs_are_rescaled_by_the_temperature():
    logits = np.asarray([[2.0, 0.0, -1.0]])
    p = calibrated_probabilities(logits)
    np.testing.assert_allclose(calibrated_probabilities(p, "probabilities", 2.0), calibrated_probabilities(logits, "logits", 2.0),
                               rtol=1e-5)
    np.testing.assert_allclose(calibrated_probabilities(logits, "logits", 2.0), calibrated_probabilities(logits / 2), rtol=1e-6)


def test_export_fits_a_temperature_per_file_and_the_runtime_applies_it(tmp_path, tree_factory):
    pytest.importorskip("torch")
    from fer_export.cli import main as export_main
    from fer_runtime.contract import read_onnx_contract
    from fer_runtime.session import OnnxModel
    from fer_train.train import main as train_main

    root = tree_factory("train-val-test", per_class=12)
    assert train_main(["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "r", "--arch", "vgg",
                       "--arch-arg", "width=0.125", "--epochs", "2", "--batch-size", "8", "--no-progress", "--amp", "off",
                       "--threads", "1"]) == 0
    assert export_main(["--ckpt", str(tmp_path / "r" / "best.pt"), "--int8", "--calib-size", "24", "--max-drop", "100",
                        "--out-dir", str(tmp_path), "--name", "e"]) == 0
    report = json.loads((tmp_path / "e" / "export_report.json").read_text())
    assert (tmp_path / "e" / "reliability.png").stat().st_size > 0
    for file, row in (("model.onnx", report["artefacts"][-2]), ("model.int8.onnx", report["artefacts"][-1])):
        model = OnnxModel(tmp_path / "e" / file)
        t = read_onnx_contract(tmp_path / "e" / file).temperature
        assert t != 1.0 and row["temperature"] == t
        x = np.random.default_rng(0).normal(size=(4, 1, 48, 48)).astype(np.float32)
        np.testing.assert_allclose(model.probabilities(x), calibrated_probabilities(model.run(x), "logits", t), rtol=1e-5)
        cal = row["val"]["calibration"]
        assert cal["ece_after"] <= cal["ece_before"] + 1e-9  # fitted on val: never worse there
