"""The Python API (fer_runtime.FaceExpressionRecognizer): plain records, BGR and RGB said plainly, crops in one
batch, fer-run's probabilities; and the README's example runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import fer_runtime
from fer_runtime import FaceExpressionRecognizer
from fer_runtime.cli import DEMO_IMAGE

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("angry", "happy", "sad")


MEAN, STD, TEMPERATURE, PRIOR, TAU = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25), 2.5, (0.6, 0.3, 0.1), 0.7


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    """A colour model with a calibrated temperature and a decision rule: every step of the README's probability shows."""
    return tiny_model_factory(CLASSES, seed=5, channels=3, mean=MEAN, std=STD, temperature=TEMPERATURE,
                              class_prior=PRIOR, prior_correction=TAU)


@pytest.fixture(scope="module")
def fer(model):
    return FaceExpressionRecognizer(model)


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (str, int, float)


def test_the_package_exports_the_api():
    assert "FaceExpressionRecognizer" in fer_runtime.__all__
    assert FaceExpressionRecognizer.__doc__ and FaceExpressionRecognizer.analyze.__doc__
    assert FaceExpressionRecognizer.classify_crops.__doc__


def test_analyze_a_path_gives_plain_records_like_fer_runs_jsonl(fer, model, tmp_path):
    faces = fer.analyze(DEMO_IMAGE)
    assert len(faces) == 1 and _plain(faces) and json.loads(json.dumps(faces)) == faces
    face = faces[0]
    assert set(face) == {"box", "emotions", "dominant_emotion", "confidence"}
    assert list(face["emotions"]) == list(CLASSES) and abs(sum(face["emotions"].values()) - 1) < 1e-5
    assert face["dominant_emotion"] == max(face["emotions"], key=face["emotions"].get)
    assert face["confidence"] == face["emotions"][face["dominant_emotion"]]
    out = tmp_path / "run.jsonl"
    r = CliRunner().invoke(__import__("fer_runtime.cli", fromlist=["main"]).main,
                           ["--source", str(DEMO_IMAGE), "--model", str(model), "--no-display", "--json", str(out)])
    assert r.exit_code == 0, r.output
    cli = json.loads(out.read_text())["faces"][0]
    assert cli["label"] == face["dominant_emotion"] and cli["box"] == pytest.approx(face["box"], abs=0.5)
    assert cli["probabilities"] == pytest.approx(face["emotions"], abs=1e-4)


def test_the_probabilities_are_the_readmes_formula(fer, model):
    """softmax(logits / temperature - tau * log(class prior)) of the crop as the contract says to feed it: RGB,
    pixel / 255, minus mean, over std; computed here with ONNX Runtime and numpy alone."""
    import onnxruntime as ort

    crop = cv2.resize(cv2.imread(str(DEMO_IMAGE))[60:170, 80:190], (48, 48), interpolation=cv2.INTER_AREA)  # model size
    rgb = crop[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)[None]
    x = ((rgb / np.float32(255) - np.float32(MEAN)[:, None, None]) / np.float32(STD)[:, None, None]).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0].astype(np.float64)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    expected = softmax(logits / TEMPERATURE - TAU * np.log(PRIOR))
    # the test has power: leaving out the temperature or the prior changes the answer visibly
    assert np.abs(expected - softmax(logits - TAU * np.log(PRIOR))).max() > 0.02
    assert np.abs(expected - softmax(logits / TEMPERATURE)).max() > 0.1
    got = fer.analyze(crop, crops=True)[0]
    assert list(got["emotions"]) == list(CLASSES)
    assert list(got["emotions"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert got["dominant_emotion"] == CLASSES[int(expected.argmax())] and got["box"] == [0, 0, 48, 48]


def test_an_array_is_bgr_unless_told_rgb_and_its_alpha_read_as_a_files(fer, tmp_path):
    bgr = cv2.imread(str(DEMO_IMAGE))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    from_path = fer.analyze(DEMO_IMAGE)
    assert fer.analyze(bgr) == from_path
    assert fer.analyze(rgb, color="rgb") == from_path
    swapped = fer.analyze(rgb)  # RGB read as BGR: a 3-channel model sees other colours
    assert swapped[0]["emotions"] != from_path[0]["emotions"]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert fer.analyze(rgba, color="rgb") == from_path
    clear = np.dstack([bgr, np.zeros(bgr.shape[:2], np.uint8)])  # fully transparent: black, as a file's alpha is read
    assert cv2.imwrite(str(tmp_path / "clear.png"), clear)
    assert fer.analyze(clear) == fer.analyze(tmp_path / "clear.png") == []
    half = np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])
    assert cv2.imwrite(str(tmp_path / "half.png"), half)
    assert fer.analyze(half) == fer.analyze(tmp_path / "half.png")


def test_classify_crops_is_one_batch_in_order(fer, monkeypatch):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, h, 3), dtype=np.uint8) for h in (48, 64, 100)] + [np.full((40, 40), 128, np.uint8)]
    one_by_one = [fer.analyze(c, crops=True)[0] for c in crops]
    calls = []
    real = fer._engine.model.probabilities
    monkeypatch.setattr(fer._engine.model, "probabilities", lambda batch: calls.append(len(batch)) or real(batch))
    batch = fer.classify_crops(crops)
    assert calls == [4]
    assert [b["dominant_emotion"] for b in batch] == [o["dominant_emotion"] for o in one_by_one]
    for b, o in zip(batch, one_by_one):
        assert list(b["emotions"].values()) == pytest.approx(list(o["emotions"].values()), abs=1e-5)
    assert fer.classify_crops([]) == []


def test_no_face_is_an_empty_list(fer):
    assert fer.analyze(np.full((240, 320, 3), 90, np.uint8)) == []


@pytest.mark.parametrize("image, color, error, message", [
    ("missing.jpg", "bgr", FileNotFoundError, "no image file"),
    (np.zeros((10, 10, 3), np.float32), "bgr", ValueError, "must be uint8"),
    (np.zeros((10, 10, 2), np.uint8), "bgr", ValueError, "H x W x 3"),
    (np.zeros((10, 10, 3), np.uint8), "hsv", ValueError, "color must be 'bgr' or 'rgb'"),
])
def test_bad_input_says_what_is_wrong(fer, tmp_path, image, color, error, message):
    with pytest.raises(error, match=message):
        fer.analyze(tmp_path / image if isinstance(image, str) else image, color=color)


def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written():
    from fer_models import MODELS_DIR

    if not (MODELS_DIR / "ferplus.int8.onnx").is_file():
        pytest.skip("the shipped model is not in models/")
    code = _readme_python_block()
    assert "FaceExpressionRecognizer" in code and "demo_face.jpg" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, emotions = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"\[\d+, \d+, \d+, \d+\] \w+ [01]\.\d\d", first), first
    assert "'happy':" in emotions and "'contempt':" in emotions
