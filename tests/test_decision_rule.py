"""The decision rule that travels with a model: a class prior and its correction, fitted on validation (torch-free)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime.calibration import ACCURACY_FLOOR, fit_prior_correction, training_prior
from fer_runtime.cli import main as run_main
from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.session import OnnxModel, calibrated_probabilities, decision_probabilities

CLASSES = ("angry", "happy", "sad")
PRIOR = (0.05, 0.9, 0.05)  # a training set of mostly happy faces


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """A folder of 48x48 grey crops, a brightness ramp from black to white."""
    import cv2

    folder = tmp_path_factory.mktemp("crops")
    for i, level in enumerate(np.linspace(0, 255, 41).round()):
        cv2.imwrite(str(folder / f"c{i:02d}.png"), np.full((48, 48), level, np.uint8))
    return folder


def _model(tmp_path, tau: float, prior=PRIOR):
    from .onnx_models import brightness_classifier

    contract = ModelContract(classes=CLASSES, temperature=1.5, class_prior=prior, prior_correction=tau)
    return brightness_classifier(tmp_path / f"tau{tau}.onnx", contract)


def _labels(model, folder, *extra) -> list[str]:
    out = folder.parent / f"{folder.name}-{model.stem}-{'-'.join(extra) or 'default'}.jsonl"
    r = CliRunner().invoke(run_main, ["--source", str(folder), "--crops", "--no-display", "--model", str(model),
                                      "--json", str(out), *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    return [json.loads(line)["faces"][0]["label"] for line in out.read_text().splitlines()]


def test_fer_run_applies_the_models_rule_and_prior_train_restores_the_raw_argmax(tmp_path, crops):
    import cv2

    model = _model(tmp_path, tau=1.0)
    om = OnnxModel(model, threads=1)
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[None] for p in sorted(crops.glob("*.png"))])
    raw = om.raw_outputs(images)
    expected_raw = [CLASSES[k] for k in (raw / 1.5).argmax(1)]
    expected_rule = [CLASSES[k] for k in (raw / 1.5 - np.log(PRIOR)).argmax(1)]
    assert set(expected_raw) == set(CLASSES)  # dark angry, mid happy, bright sad
    # the rule takes the edges of the (mostly happy) training prior's middle band: some labels change
    assert 0 < sum(a != b for a, b in zip(expected_raw, expected_rule)) < len(expected_raw) // 2
    assert _labels(model, crops) == expected_rule
    assert _labels(model, crops, "--prior", "train") == expected_raw
    assert _labels(_model(tmp_path, tau=0.0), crops) == expected_raw  # a model selected with tau 0 keeps its argmax
    assert _labels(_model(tmp_path, tau=0.0), crops, "--prior", "balanced") == expected_rule
    from fer_runtime import FaceExpressionRecognizer  # the Python API reads the same rule

    paths = [str(p) for p in sorted(crops.glob("*.png"))]
    for prior, expected in (("model", expected_rule), ("train", expected_raw)):
        records = FaceExpressionRecognizer(model, prior=prior).classify_crops(paths)
        assert [r["dominant_emotion"] for r in records] == expected


def test_probabilities_under_the_rule_are_the_prior_shifted_softmax():
    logits = np.array([[2.0, 3.0, 1.0]], np.float32)
    c = ModelContract(classes=CLASSES, temperature=2.0, class_prior=PRIOR, prior_correction=0.5)
    z = logits / 2.0 - 0.5 * np.log(np.asarray(PRIOR, np.float32))
    assert np.allclose(decision_probabilities(logits, c), np.exp(z) / np.exp(z).sum(), atol=1e-6)
    assert np.allclose(decision_probabilities(logits, c, 0.0), calibrated_probabilities(logits, "logits", 2.0))


def test_balanced_needs_a_recorded_prior_and_bad_rules_are_refused(tmp_path, crops):
    from .onnx_models import tiny_classifier

    bare = tiny_classifier(tmp_path / "bare.onnx", ModelContract(classes=CLASSES))
    r = CliRunner().invoke(run_main, ["--source", str(crops), "--crops", "--no-display", "--model", str(bare),
                                      "--prior", "balanced"])  # fmt: skip
    assert r.exit_code == 2 and "records no class prior" in r.output and "Traceback" not in r.output
    for bad in ({"class_prior": (0.5, 0.5)}, {"class_prior": (0.5, 0.6, 0.1)}, {"prior_correction": 0.5},
                {"class_prior": PRIOR, "prior_correction": -1.0}):  # fmt: skip
        with pytest.raises(ContractError):
            ModelContract(classes=CLASSES, **bad)


def test_a_version_3_contract_still_loads_with_no_rule():
    data = ModelContract(classes=CLASSES).to_dict()
    for key in ("class_prior", "prior_correction"):
        data.pop(key)
    data["version"] = 3
    c = ModelContract.from_dict(data)
    assert c.class_prior == () and c.prior_correction == 0.0


def test_training_prior_follows_the_sampler_and_soft_targets():
    labels = np.array([0] * 10 + [1] * 80 + [2] * 10)
    assert training_prior(labels, 3) == pytest.approx((0.1, 0.8, 0.1), abs=1e-6)
    sqrt = np.sqrt([10, 80, 10])
    assert training_prior(labels, 3, "sqrt") == pytest.approx(tuple(sqrt / sqrt.sum()), abs=1e-6)
    assert training_prior(labels, 3, "balanced") == pytest.approx((1 / 3,) * 3, abs=1e-6)
    targets = np.tile([0.5, 0.5, 0.0], (len(labels), 1))
    assert training_prior(labels, 3, targets=targets)[2] == pytest.approx(1e-4, rel=0.01)  # unseen: small, finite


def test_the_correction_is_chosen_on_validation_within_the_accuracy_floor():
    rng = np.random.default_rng(0)
    prior = (0.1, 0.8, 0.1)
    labels = rng.choice(3, 3000, p=[1 / 3] * 3)  # a balanced validation set
    logits = np.log(np.asarray(prior)) + rng.normal(0, 1.0, (3000, 3)) + 2.0 * np.eye(3)[labels]
    fit = fit_prior_correction(logits, labels, 1.0, prior)
    assert fit["prior_correction"] > 0.5  # dividing the skewed prior out helps on balanced faces
    chosen = next(r for r in fit["grid"] if r["tau"] == fit["prior_correction"])
    assert chosen["accuracy"] >= fit["grid"][0]["accuracy"] - ACCURACY_FLOOR
    skewed = rng.choice(3, 3000, p=prior)  # validation that shares the training prior: the floor keeps tau small
    logits = np.log(np.asarray(prior)) + rng.normal(0, 1.0, (3000, 3)) + 2.0 * np.eye(3)[skewed]
    fit = fit_prior_correction(logits, skewed, 1.0, prior)
    chosen = next(r for r in fit["grid"] if r["tau"] == fit["prior_correction"])
    assert chosen["accuracy"] >= fit["grid"][0]["accuracy"] - ACCURACY_FLOOR
    score = lambda r: r["macro_f1"] + r["balanced_accuracy"]
    assert all(r["accuracy"] < fit["grid"][0]["accuracy"] - ACCURACY_FLOOR for r in fit["grid"] if score(r) > score(chosen))
