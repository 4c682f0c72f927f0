"""The decision rule that travels with a model: a class prior and its correction, fitted on validation (torch-free)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime.calibration import ACCURACY_FLOOR, fit_prior_correction, training_prior
from fer_runtime.cli import main as run_main
from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.decision import calibrated_probabilities, decision_probabilities
from fer_runtime.session import OnnxModel

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
                                      "--json", str(out), *extra])
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
                                      "--prior", "balanced"])
    assert r.exit_code == 2 and "records no class prior" in r.output and "Traceback" not in r.output
    for bad in ({"class_prior": (0.5, 0.5)}, {"class_prior": (0.5, 0.6, 0.1)}, {"prior_correction": 0.5},
                {"class_prior": PRIOR, "prior_correction": -1.0}):
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


def _rule_by_hand(logits: np.ndarray, labels: np.ndarray, temperature: float, prior) -> tuple[float, list]:
    """The decision rule of docs/export.md computed apart from fer_runtime (numpy only, so the runtime venv runs it
    too): of tau 0, 0.05, ..., 1, the best mean of macro-F1 and balanced accuracy whose accuracy stays within 0.5
    points of tau 0's; the smallest of equals. Every class is in ``labels``. Returns tau and every (tau, accuracy, score)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    k = logits.shape[1]
    rows = []
    for tau in np.arange(21) * 0.05:
        pred = (logits / temperature - tau * np.log(np.asarray(prior, np.float64))).argmax(1)
        hits = np.array([[np.sum((labels == t) & (pred == p)) for p in range(k)] for t in range(k)], np.float64)
        recall = np.diag(hits) / hits.sum(1)
        precision = np.divide(np.diag(hits), hits.sum(0), out=np.zeros(k), where=hits.sum(0) > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
        rows.append((round(float(tau), 2), float((pred == labels).mean()), (f1.mean() + recall.mean()) / 2))
    allowed = [r for r in rows if r[1] >= rows[0][1] - 0.005]
    return max(allowed, key=lambda r: r[2])[0], rows


def test_the_correction_is_chosen_on_validation_within_the_accuracy_floor():
    rng = np.random.default_rng(0)
    prior = (0.1, 0.8, 0.1)
    labels = rng.choice(3, 3000, p=[1 / 3] * 3)  # a balanced validation set
    logits = np.log(np.asarray(prior)) + rng.normal(0, 1.0, (3000, 3)) + 2.0 * np.eye(3)[labels]
    fit = fit_prior_correction(logits, labels, 1.0, prior)
    tau, rows = _rule_by_hand(logits, labels, 1.0, prior)
    assert fit["prior_correction"] == tau > 0.5, rows  # dividing the skewed prior out helps on balanced faces
    # validation that shares the training prior: a larger tau would score better but costs accuracy; the floor bites
    skewed = rng.choice(3, 3000, p=prior)
    logits = 0.5 * np.log(np.asarray(prior)) + rng.normal(0, 1.0, (3000, 3)) + 1.5 * np.eye(3)[skewed]
    fit = fit_prior_correction(logits, skewed, 1.0, prior)
    tau, rows = _rule_by_hand(logits, skewed, 1.0, prior)
    assert fit["prior_correction"] == tau < max(rows, key=lambda r: r[2])[0], rows
    assert fit["accuracy_floor"] == pytest.approx(rows[0][1] - ACCURACY_FLOOR)


def _faint_bars(root, counts: dict[str, dict[str, int]], seed: int = 0) -> None:
    """Class folders of 48x48 grey images whose class is a faint bar in noise (the row band of tests/conftest.py's
    bars, far dimmer): classes overlap, so a model's guesses lean to the classes it saw most."""
    import cv2

    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class[name]):
                img = rng.normal(100, 30, (48, 48))
                img[label * 16 : (label + 1) * 16, 12:36] += 40
                cv2.imwrite(str(folder / f"{split}_{i:03d}.png"), img.clip(0, 255).astype(np.uint8))


def _split_images(split_dir) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for f in sorted((split_dir / name).glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("L"), np.float32)[None])
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def test_an_export_on_skewed_data_records_the_training_prior_and_the_rule_val_picks(tmp_path):
    """fer-export on a run trained mostly on angry faces: the contract's class_prior is the training split's class
    frequencies and its prior_correction the tau of the rule of docs/export.md, both computed here from the files alone."""
    pytest.importorskip("torch")
    import onnxruntime as ort

    from fer_export.cli import main as export_main
    from fer_train.train import main as train_main

    train_counts = {"angry": 90, "happy": 24, "sad": 6}
    _faint_bars(tmp_path / "data", {"train": train_counts, "val": dict.fromkeys(CLASSES, 40),
                                    "test": dict.fromkeys(CLASSES, 4)})
    runs = tmp_path / "runs"
    assert train_main(["--data-root", str(tmp_path / "data"), "--out-dir", str(runs), "--name", "r", "--arch", "vgg",
                       "--arch-arg", "width=0.125", "--batch-size", "16", "--epochs", "3", "--no-progress",
                       "--threads", "1", "--amp", "off", "--lr", "3e-3"]) == 0
    assert export_main(["--ckpt", str(runs / "r" / "best.pt"), "--out-dir", str(tmp_path / "out"), "--name", "e",
                        "--threads", "1", "--no-progress"]) == 0
    path = tmp_path / "out" / "e" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["fer_contract"])

    # the prior: the training folders' class frequencies (fer-train's default sampler draws images uniformly)
    n = np.asarray([train_counts[c] for c in CLASSES], np.float64)
    assert contract["class_prior"] == pytest.approx((n / n.sum()).tolist(), abs=1e-5)

    # the rule: the model's val logits, here from the files and ONNX Runtime alone
    images, labels = _split_images(tmp_path / "data" / "val")
    x = ((images / np.float32(255) - np.float32(contract["mean"][0])) / np.float32(contract["std"][0])).astype(np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    t = contract["temperature"]

    def nll(temperature: float) -> float:
        z = logits / temperature
        z -= z.max(1, keepdims=True)
        return float(-(z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(1))).mean())

    assert nll(t) <= min(nll(t * 1.02), nll(t / 1.02)) + 1e-9  # the temperature minimises val NLL
    tau, rows = _rule_by_hand(logits, labels, t, contract["class_prior"])
    assert tau > 0, f"the test has no power: on this data the raw argmax already is the rule {rows}"
    assert contract["prior_correction"] == pytest.approx(tau), rows
