"""The shift report: every model of a fer-bench run scored on its split under everyday camera shifts.

The split is decoded once in grey at 48 px (the side the severities are stated for), each shift is applied once per
image with its own seed (``fer_runtime.data.shifts``), and every model gets the same shifted images in its own layout
and size, scored by the one scorer (``fer_runtime.scoring.SplitScorer``: the shared classes, its own decision rule).
Drops are in accuracy points against the same path without a shift.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_runtime.contract import to_model_layout
from fer_runtime.data import DecodedSplit, SplitManifest, load_split
from fer_runtime.data.shifts import MODERATE, REFERENCE_SIDE, SEVERITIES, SHIFTS, shifted_images
from fer_runtime.scoring import SplitScorer

LEVELS = {"moderate": (MODERATE,), "all": tuple(range(len(SEVERITIES)))}


def load_for_shifts(manifest: SplitManifest, split: str) -> DecodedSplit:
    """The images the report shifts: the split decoded in grey at 48 px (the decode cache), and their labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the main table reports skipped files
        return load_split(manifest, split, 1, (REFERENCE_SIDE, REFERENCE_SIDE))


def shift_report(scorers: dict[str, SplitScorer], decoded: DecodedSplit, split: str, levels: str,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Per model (each scorer made with ``decoded``'s labels): the unshifted figures, each shift at each severity
    asked for, and at the moderate severity the mean and worst accuracy drop over all shifts."""
    base = decoded.images
    severities = LEVELS[levels]
    clean = {name: _quality(scorer, list(base[:, 0])) for name, scorer in scorers.items()}
    rows: dict[str, dict[str, list[dict]]] = {name: {} for name in scorers}
    for shift in SHIFTS.values():
        for severity in severities:
            images = shifted_images(base, shift.name, severity)
            for name, scorer in scorers.items():
                q = _quality(scorer, images)
                rows[name].setdefault(shift.name, []).append({
                    "severity": SEVERITIES[severity], "level": shift.levels[severity], "label": shift.label(severity),
                    "accuracy": q["accuracy"], "macro_f1": q["macro_f1"],
                    "drop": 100.0 * (clean[name]["accuracy"] - q["accuracy"]),
                    "macro_f1_drop": 100.0 * (clean[name]["macro_f1"] - q["macro_f1"]),
                })
            if progress is not None:
                progress(1)
    models = {}
    for name in scorers:
        moderate = {s: next(r for r in rs if r["severity"] == SEVERITIES[MODERATE]) for s, rs in rows[name].items()}
        drops = {s: r["drop"] for s, r in moderate.items()}
        worst = max(drops, key=drops.get)
        models[name] = {
            "clean": {k: clean[name][k] for k in ("accuracy", "macro_f1")},
            "shifts": rows[name],
            "moderate": {"mean_drop": float(np.mean(list(drops.values()))), "worst_drop": drops[worst], "worst_shift": worst,
                         "mean_macro_f1_drop": float(np.mean([r["macro_f1_drop"] for r in moderate.values()]))},
        }
    families = {s.name: {"kind": s.kind, "levels": dict(zip(SEVERITIES, (s.label(i) for i in range(3))))}
                for s in SHIFTS.values()}
    return {"split": split, "images": int(len(base)), "severities": [SEVERITIES[i] for i in severities],
            "families": families, "models": models}


def _quality(scorer: SplitScorer, images: list[np.ndarray]) -> dict:
    """Shifted images (grey H x W or BGR H x W x 3) in the scorer's model's layout and size, scored."""
    c = scorer.model.contract
    return scorer.quality(model_inputs(images, c.channels, c.input_size))


def steps(levels: str) -> int:
    return len(SHIFTS) * len(LEVELS[levels])


def model_inputs(images: list[np.ndarray], channels: int, size: tuple[int, int]) -> np.ndarray:
    """Shifted images in one model's layout and size, as the runtime prepares a crop."""
    return np.stack([to_model_layout(img, channels, *size) for img in images])


def markdown(report: dict) -> list[str]:
    names = list(report["models"])
    lines = ["", f"## Shift report ({report['images']} images of {report['split']}, accuracy and its drop in points)", "",
             "Each shift is seeded per image and the same for every model (`fer_runtime/data/shifts.py`); framing "
             "beyond the crop repeats its edge pixels. Moderate is the severity the robustness targets are read on.", "",
             "| model | clean accuracy / macro-F1 | moderate: mean drop | worst drop (shift) | mean macro-F1 drop |",
             "|---|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        mod = m["moderate"]
        lines.append(f"| {name} | {m['clean']['accuracy']:.4f} / {m['clean']['macro_f1']:.4f} | {mod['mean_drop']:.2f} | "
                     f"{mod['worst_drop']:.2f} ({mod['worst_shift']}) | {mod['mean_macro_f1_drop']:.2f} |")
    lines += ["", "| shift | severity | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    first = report["models"][names[0]]["shifts"]
    for shift, rows in first.items():
        for i, row in enumerate(rows):
            cells = []
            for name in names:
                r = report["models"][name]["shifts"][shift][i]
                cells.append(f"{r['accuracy']:.4f} ({-r['drop']:+.1f})")
            lines.append(f"| {shift} | {row['severity']}: {row['label']} | " + " | ".join(cells) + " |")
    return lines


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, shifts = list(report["models"]), list(report["families"])
    severities = report["severities"]
    fig, axes = plt.subplots(len(severities), 1, figsize=(11, 2.8 * len(severities) + 0.6), squeeze=False)
    width = 0.8 / len(names)
    for ax, severity in zip(axes[:, 0], severities):
        for k, name in enumerate(names):
            rows = report["models"][name]["shifts"]
            drops = [next(r["drop"] for r in rows[s] if r["severity"] == severity) for s in shifts]
            ax.bar(np.arange(len(shifts)) + (k - (len(names) - 1) / 2) * width, drops, width, label=name)
        ax.axhline(3.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(shifts)), shifts, rotation=20, fontsize=7)
        ax.set_ylabel("accuracy drop (points)", fontsize=8)
        ax.set_title(f"{severity} shifts on {report['split']} ({report['images']} images); dashed: 3 points", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
