"""Export reports: JSON + Markdown, one row per artefact; the reliability plot; the summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

from fer_runtime.calibration import plot_reliability
from fer_runtime.outputs import atomic_write_text


def _ece(row: dict) -> str:
    cal = row.get("test", row.get("val", {})).get("calibration")
    return f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}" if cal else "-"


def write_report(out_dir: Path, report: dict, final_dir: Path | None = None) -> tuple[Path, Path]:
    """export_report.json/.md in ``out_dir``; paths name ``final_dir``, where the staging folder will be moved."""
    json_path, md_path = out_dir / "export_report.json", out_dir / "export_report.md"
    for name, fit in report.get("decision_rule", {}).items():
        note = f"{name}: {fit['note']}" if "note" in fit else None
        if note and note not in report.setdefault("notes", []):
            report["notes"].append(note)
    if final_dir is not None:
        text = json.dumps(report)
        report = json.loads(text.replace(json.dumps(str(out_dir))[1:-1], json.dumps(str(final_dir))[1:-1]))
    atomic_write_text(json_path, json.dumps(report, indent=2))
    lines = [f"# Export report: {report.get('name', out_dir.name)}", "", f"Source: `{report.get('source')}`", ""]
    lines += ["ONNX rows are scored under each file's decision rule (temperature, then prior correction tau, both fitted "
              "on val).", "",
              "| artefact | params | MACs | file KB | val acc | val F1 | val bal. acc | test acc | test F1 | test bal. acc | "
              "temperature | tau | test ECE before / after | latency ms (b1, 1 thr) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["artefacts"]:

        def f(key, split, fmt="{:.4f}", row=row):
            v = row.get(split, {}).get(key)
            return fmt.format(v) if v is not None else "-"

        lines.append(
            f"| {row['name']} | {row.get('params', '-')} | {row.get('macs', '-')} | "
            f"{row['file_kb'] if row.get('file_kb') else '-'} | {f('accuracy', 'val')} | {f('macro_f1', 'val')} | "
            f"{f('balanced_accuracy', 'val')} | {f('accuracy', 'test')} | {f('macro_f1', 'test')} | "
            f"{f('balanced_accuracy', 'test')} | {row.get('temperature', '-')} | {row.get('prior_correction', '-')} | "
            f"{_ece(row)} | "
            f"{format(row['latency_ms'], '.3f') if row.get('latency_ms') else '-'} |"
        )
    for name, fit in report.get("decision_rule", {}).items():
        if "grid" in fit:
            lines += ["", f"## Decision rule of {name}: tau {fit['prior_correction']} (val accuracy floor "
                      f"{fit['accuracy_floor']:.4f})", "", "| tau | val acc | val macro-F1 | val bal. acc |",
                      "|---:|---:|---:|---:|"]
            lines += [f"| {r['tau']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['balanced_accuracy']:.4f} |"
                      for r in fit["grid"]]
    lines += _formats_table(report.get("formats", []))
    for key in ("parity", "ratios", "notes", "paths"):
        if report.get(key):
            lines += ["", f"## {key}", "", "```json", json.dumps(report[key], indent=2), "```"]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


def _formats_table(rows: list[dict]) -> list[str]:
    """Each --format file against the ONNX file of its precision (fer_export.formats)."""
    if not rows:
        return []
    lines = ["", "## Formats: each file against the ONNX file of its precision", "",
             "Validation images, probabilities under each file's decision rule; latency at batch 1, one thread, each file "
             "timed interleaved with its ONNX file.", "",
             "| file | runtime | precision | size KB | against | images | top-1 agreement | mean abs prob. diff | latency ms | "
             "ONNX latency ms |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {Path(r['file']).name} | {r['runtime']} | {r['precision']} | {r['file_kb']} | "
                     f"{Path(r['reference']).name} | {r['images']} | {r['top1_agreement']:.4f} | {r['mean_abs_prob_diff']:.4f} | "
                     f"{r['latency_ms']:.3f} | {r['onnx_latency_ms']:.3f} |")
    return lines


def reliability_plot(report: dict, out: Path) -> None:
    """reliability.png of every scored row (test split, else val), named in the report's paths; none without matplotlib."""
    split = "test" if any("test" in r for r in report["artefacts"]) else "val"
    curves = {r["name"]: r[split]["calibration"] for r in report["artefacts"] if "calibration" in r.get(split, {})}
    try:
        path = plot_reliability(curves, out / "reliability.png", title=f"{split} split; temperature fitted on val")
    except ImportError:
        return
    report["paths"]["reliability"] = str(path)


def print_summary(report: dict) -> None:
    for row in report["artefacts"]:
        parts = [row["name"].ljust(22)]
        for split in ("val", "test"):
            if split in row:
                parts.append(f"{split} acc {row[split]['accuracy']:.4f} F1 {row[split]['macro_f1']:.4f}")
        if row.get("file_kb"):
            parts.append(f"{row['file_kb']} KB, {row['latency_ms']:.3f} ms")
        print(" | ".join(parts))
    if report.get("ratios"):
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
