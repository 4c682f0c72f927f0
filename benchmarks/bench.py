"""fer-bench: accuracy, macro-F1 and speed of ONNX models side by side, on real data.

Models are timed interleaved (A, B, A, B, ...) so machine drift hits all of them alike.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from functools import partial
from pathlib import Path

import click
import numpy as np

from benchmarks.data import bench_manifest, class_mapping, load_for
from fer_runtime.contract import ContractError
from fer_runtime.data import PROTOCOLS, DataError
from fer_runtime.metrics import classification_metrics
from fer_runtime.profiling import time_interleaved
from fer_runtime.session import OnnxModel

ROUNDS = 10
# The instruction sets that decide INT8 and bf16 speed: without VNNI, INT8 gains far less over fp32.
LATENCY_CPU_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma", "f16c"}


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
    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": ort.__version__, "python": platform.python_version(),
            "threads_all": threads_all, "platform": platform.platform(),
            "cpu_features": sorted(flags & LATENCY_CPU_FLAGS)}  # fmt: skip


def metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    return classification_metrics(y_true, y_pred, classes)


def param_count(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path))
    # INT8 QDQ graphs store int8 weights plus small scale/zero-point tensors; count weights only.
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if not t.name.endswith(("_scale", "_zero_point")) and int(np.prod(t.dims)) > 1))  # fmt: skip


def peak_rss_mb(path: Path, threads: int) -> float:
    """Peak resident memory of a fresh process that loads the model and runs batch 32."""
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork + exec, so the child would
    # report this (large) benchmark process's own peak.
    code = (
        "import re, numpy as np; from fer_runtime.session import OnnxModel;"
        f"m = OnnxModel({str(path)!r}, threads={threads}); c = m.contract;"
        "x = np.zeros((32, c.channels, *c.input_size), np.float32); [m.run(x) for _ in range(5)];"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


def time_sessions(sessions: dict[str, OnnxModel], batch: int, calls: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    inputs = {n: rng.normal(size=(batch, s.contract.channels, *s.contract.input_size)).astype(np.float32)
              for n, s in sessions.items()}  # fmt: skip
    return time_interleaved({n: partial(s.run, inputs[n]) for n, s in sessions.items()}, ROUNDS, calls)


def stats_ms(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "n": len(a)}  # fmt: skip


def default_models() -> list[str]:
    from fer_models import MODELS_DIR

    shipped = ["ferplus.onnx", "ferplus.int8.onnx", "fer2013.onnx", "fer2013.int8.onnx"]
    return [str(MODELS_DIR / name) for name in shipped if (MODELS_DIR / name).is_file()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", "model_paths", multiple=True, help="ONNX files (default: the shipped models)")
@click.option("--data-root", default=None, help="data root (default: env FER_DATA_ROOT, or the --manifest's root)")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None)
@click.option("--manifest", default=None, help="a run folder or its split_manifest.json: score exactly that run's split")
@click.option("--split", default="test", show_default=True)
@click.option("--out-dir", default="bench_results", show_default=True)
@click.option("--predictions", default=None, help="per-image predictions CSV")
@click.option("--pipeline", "pipeline_video", default=None, help="video for end-to-end fer-run throughput")
@click.option("--torch", "torch_ckpt", default=None, help="add a PyTorch checkpoint row (needs the [train] extra)")
@click.option("--calls", type=int, default=30, show_default=True, help="timed calls per model per round (10 rounds)")
def main(model_paths, data_root, protocol, manifest, split, out_dir, predictions, pipeline_video, torch_ckpt, calls):
    """Compare ONNX models: quality, latency, throughput, size and memory, on one split of real data."""
    try:
        data = bench_manifest(data_root, protocol, manifest)
        results = run(list(model_paths) or default_models(), data, split, Path(out_dir), predictions,
                      pipeline_video, torch_ckpt, calls)  # fmt: skip
    except (DataError, ContractError) as exc:
        click.echo(f"fer-bench: error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"fer-bench: wrote {results['outputs']}")


def run(model_paths, manifest, split, out_dir: Path, predictions, pipeline_video, torch_ckpt, calls) -> dict:
    threads_all = os.cpu_count() or 1
    paths = [Path(p) for p in model_paths]
    names = _unique_names(paths)
    one = {n: OnnxModel(p, threads=1, providers=["CPUExecutionProvider"]) for n, p in zip(names, paths)}
    classes = manifest.classes
    if split not in manifest.splits:
        raise DataError(f"split '{split}' not in this data (has {', '.join(manifest.splits)})")
    rows: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {}
    cache: dict[tuple, object] = {}
    labels = None
    for name, path in zip(names, paths):
        model = one[name]
        mapping = class_mapping(model.contract.classes, classes)
        c = model.contract
        key = (c.channels, c.input_size)
        if key not in cache:
            cache[key] = load_for(manifest, split, c)
            if cache[key].skipped:
                click.echo(f"fer-bench: warning: {len(cache[key].skipped)} unreadable images skipped, e.g. "
                           f"{cache[key].skipped[0][0]}", err=True)  # fmt: skip
        decoded = cache[key]
        images, labels, image_paths, skipped = decoded.images, decoded.labels, decoded.paths, decoded.skipped
        allm = OnnxModel(path, threads=0, providers=["CPUExecutionProvider"])
        probs = allm.predict_pixels(images)[:, mapping]  # columns in data class order
        preds[name] = probs.argmax(1)
        rows[name] = {"file": str(path), "file_kb": round(path.stat().st_size / 1024, 1), "params": param_count(path),
                      "quality": metrics(labels, preds[name], classes), "skipped_images": len(skipped)}  # fmt: skip
    if torch_ckpt:
        _torch_row(torch_ckpt, manifest, split, classes, rows, preds)
    # Speed: interleaved rounds, 1 thread and all cores at batch 1, all cores at batch 32.
    allc = {n: OnnxModel(p, threads=0, providers=["CPUExecutionProvider"]) for n, p in zip(names, paths)}
    with click.progressbar(length=3, label="timing (interleaved)") as bar:
        lat1 = time_sessions(one, 1, calls)
        bar.update(1)
        latn = time_sessions(allc, 1, calls)
        bar.update(1)
        thr = time_sessions(allc, 32, max(3, calls // 5))
        bar.update(1)
    for n in names:
        rows[n]["latency_b1_1thread"] = stats_ms(lat1[n])
        rows[n]["latency_b1_all_threads"] = stats_ms(latn[n])
        rows[n]["throughput_b32_img_per_s"] = 32 / float(np.median(thr[n]))
        rows[n]["peak_rss_mb"] = peak_rss_mb(paths[names.index(n)], 0)
    agreement = {f"{a} vs {b}": float((preds[a] == preds[b]).mean()) for i, a in enumerate(preds) for b in list(preds)[i + 1:]}
    ratios = {}
    for a in names:
        for b in names:
            if a != b and rows[a]["latency_b1_1thread"]["p50_ms"] <= rows[b]["latency_b1_1thread"]["p50_ms"]:
                ratios[f"{a} speed-up over {b} (b1, 1 thread, p50)"] = (
                    rows[b]["latency_b1_1thread"]["p50_ms"] / rows[a]["latency_b1_1thread"]["p50_ms"])  # fmt: skip
    pipeline = _pipeline(pipeline_video, names, paths) if pipeline_video else None
    results = {
        "data": {"root": manifest.root, "split": split, "protocol": manifest.protocol, "layout": manifest.layout,
                 "images": int(len(labels)), "classes": classes},
        "machine": machine_info(threads_all), "models": rows, "agreement": agreement, "ratios": ratios,
        "pipeline": pipeline, "command": " ".join(["fer-bench", *sys.argv[1:]]),
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _write(results, out_dir, preds, labels, image_paths, classes, predictions)
    results["outputs"] = outputs
    _print_table(results)
    return results


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else f"{p.parent.name}/{p.name}" for n, p in zip(names, paths)]


def _torch_row(ckpt, manifest, split, classes, rows, preds) -> None:
    try:
        import torch

        from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
        from fer_train.engine import predict_logits
    except ImportError:
        click.echo("fer-bench: --torch needs the training extra (pip install 'fer-toolchain[train]'); row skipped", err=True)
        return
    model, contract = model_from_checkpoint(load_checkpoint(ckpt))
    mapping = class_mapping(contract.classes, classes)
    decoded = load_for(manifest, split, contract)
    logits = predict_logits(model, torch.from_numpy(np.ascontiguousarray(decoded.images)), contract, torch.device("cpu"))
    name = f"pytorch:{Path(ckpt).name}"
    preds[name] = logits.numpy()[:, mapping].argmax(1)
    rows[name] = {"file": str(ckpt), "quality": metrics(decoded.labels, preds[name], classes)}


def _pipeline(video: str, names: list[str], paths: list[Path]) -> dict:
    from fer_runtime.classifier import FaceExpressionClassifier
    from fer_runtime.cli import run_pipeline
    from fer_runtime.sources import SourceError, open_source

    out = {}
    for name, path in zip(names, paths):
        try:
            source = open_source(source=video)
        except SourceError as exc:
            raise DataError(str(exc)) from None
        clf = FaceExpressionClassifier(path, detect_every=3, detect_width=320)
        stats = run_pipeline(clf, source)
        out[name] = {"fps": stats["fps"], "frames": stats["frames"], "faces": stats["faces"],
                     "settings": {"detector": "haar", "detect_width": 320, "detect_every": 3},
                     "stage_p50_ms": {k: v["p50_ms"] for k, v in stats["stages"].items()}}  # fmt: skip
    return out


def _write(results, out_dir: Path, preds, labels, image_paths, classes, predictions) -> list[str]:
    written = [out_dir / "results.json", out_dir / "report.md"]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "report.md").write_text(markdown_report(results))
    if predictions:
        with open(predictions, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", *[f"pred:{n}" for n in preds]])
            for i, p in enumerate(image_paths[: len(labels)]):
                w.writerow([p, classes[labels[i]], *[classes[preds[n][i]] for n in preds]])
        written.append(Path(predictions))
    try:
        written += _plots(results, out_dir)
    except ImportError:
        click.echo("fer-bench: matplotlib not installed; plots skipped (pip install matplotlib)", err=True)
    return [str(p) for p in written]


def markdown_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"# fer-bench: {r['data']['split']} split of {r['data']['root']} ({r['data']['images']} images)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, CPU features {', '.join(m.get('cpu_features', [])) or 'unknown'}, "
             f"onnxruntime {m['onnxruntime']}, Python {m['python']}", "",
             f"Command: `{r['command']}`", "",
             "| model | accuracy | macro-F1 | size KB | params | b1 1-thread p50 / p95 / p99 ms | b1 all-core p50 ms "
             "| b32 img/s | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in r["models"].items():
        q = row["quality"]
        if "latency_b1_1thread" in row:
            l1, ln = row["latency_b1_1thread"], row["latency_b1_all_threads"]
            lines.append(f"| {name} | {q['accuracy']:.4f} | {q['macro_f1']:.4f} | {row['file_kb']} | {row['params']} | "
                         f"{l1['p50_ms']:.3f} / {l1['p95_ms']:.3f} / {l1['p99_ms']:.3f} | {ln['p50_ms']:.3f} | "
                         f"{row['throughput_b32_img_per_s']:.0f} | {row['peak_rss_mb']:.0f} |")  # fmt: skip
        else:
            lines.append(f"| {name} | {q['accuracy']:.4f} | {q['macro_f1']:.4f} | - | - | - | - | - | - |")
    lines += ["", "## Per-class F1", "", "| model | " + " | ".join(r["data"]["classes"]) + " |",
              "|---|" + "---:|" * len(r["data"]["classes"])]  # fmt: skip
    for name, row in r["models"].items():
        pc = row["quality"]["per_class"]
        lines.append(f"| {name} | " + " | ".join(f"{pc[c]['f1']:.3f}" for c in r["data"]["classes"]) + " |")
    classes = r["data"]["classes"]
    for name, row in r["models"].items():
        lines += ["", f"## Confusion matrix: {name} (rows true, columns predicted)", "",
                  "| true \\ predicted | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]  # fmt: skip
        for c, counts in zip(classes, row["quality"]["confusion_matrix"]):
            lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in counts) + " |")
    lines += ["", "## Agreement (top-1)", ""] + [f"- {k}: {v:.4f}" for k, v in r["agreement"].items()]
    lines += ["", "## Ratios", ""] + [f"- {k}: {v:.2f}x" for k, v in r["ratios"].items()]
    if r.get("pipeline"):
        lines += ["", "## End-to-end pipeline (fer-run, headless)", ""]
        for name, p in r["pipeline"].items():
            stages = ", ".join(f"{k} {v:.3f}" for k, v in p["stage_p50_ms"].items())
            lines.append(f"- {name}: {p['fps']:.1f} FPS over {p['frames']} frames ({p['faces']} faces found; "
                         f"{p['settings']}); stage p50 ms: {stages}")
    return "\n".join(lines) + "\n"


def _plots(r: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = {n: row for n, row in r["models"].items() if "latency_b1_1thread" in row}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in timed.items():
        ax.scatter(row["latency_b1_1thread"]["p50_ms"], row["quality"]["accuracy"], s=60)
        ax.annotate(name, (row["latency_b1_1thread"]["p50_ms"], row["quality"]["accuracy"]), fontsize=8)
    ax.set_xlabel("latency p50, batch 1, 1 thread (ms)")
    ax.set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_latency.png", dpi=110)
    plt.close(fig)
    n = len(r["models"])
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.2), squeeze=False)
    for ax, (name, row) in zip(axes[0], r["models"].items()):
        cm = np.asarray(row["quality"]["confusion_matrix"], float)
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{name}\nacc {row['quality']['accuracy']:.3f}", fontsize=8)
        ax.set_xticks(range(len(r["data"]["classes"])), r["data"]["classes"], rotation=60, fontsize=7)
        ax.set_yticks(range(len(r["data"]["classes"])), r["data"]["classes"], fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrices.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([np.full(1, row["latency_b1_1thread"]["p50_ms"]) for row in timed.values()])
    ax.set_xticks(range(1, len(timed) + 1), list(timed), fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title("latency, batch 1, 1 thread: p50 (box), p95, p99 (markers)")
    for i, row in enumerate(timed.values(), start=1):
        ax.scatter([i, i], [row["latency_b1_1thread"]["p95_ms"], row["latency_b1_1thread"]["p99_ms"]], marker="x")
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    return [out_dir / "accuracy_vs_latency.png", out_dir / "confusion_matrices.png", out_dir / "latency.png"]


def _print_table(r: dict) -> None:
    click.echo(f"{'model':<28} {'acc':>7} {'F1':>7} {'KB':>8} {'b1 1thr p50':>12} {'b32 img/s':>10}")
    for name, row in r["models"].items():
        q = row["quality"]
        lat = row.get("latency_b1_1thread", {}).get("p50_ms")
        thr = row.get("throughput_b32_img_per_s")
        click.echo(f"{name[:28]:<28} {q['accuracy']:>7.4f} {q['macro_f1']:>7.4f} {row.get('file_kb', '-')!s:>8} "
                   f"{(f'{lat:.3f} ms' if lat else '-'):>12} {(f'{thr:.0f}' if thr else '-'):>10}")  # fmt: skip
    for k, v in r["ratios"].items():
        click.echo(f"  {k}: {v:.2f}x")
    for k, v in r["agreement"].items():
        click.echo(f"  agreement {k}: {v:.4f}")


if __name__ == "__main__":
    main()
