"""Calibrated confidence: a softmax temperature fitted on validation, and how well confidence matches accuracy.

``fit_temperature`` minimises the validation negative log-likelihood over one scalar T (Guo et al. 2017,
"On Calibration of Modern Neural Networks"); it never changes which class wins. ``expected_calibration_error``
is the usual 15-bin ECE: the gap between confidence and accuracy, weighted by how many predictions fall in
each confidence bin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.decision import calibrated_probabilities
from fer_runtime.metrics import classification_metrics
from fer_runtime.outputs import atomic_path

BINS = 15
T_RANGE = (0.05, 20.0)
# The prior correction (tau) is chosen from this grid on validation: the best mean of macro-F1 and balanced accuracy
# whose accuracy stays within ACCURACY_FLOOR of the raw argmax's (tau 0). Fixed before any test split was read.
PRIOR_CORRECTION_GRID = tuple(round(0.05 * i, 2) for i in range(21))
ACCURACY_FLOOR = 0.005
# what each fer-train --sampler does to the class frequencies a model sees: image weights count ** -power
SAMPLER_POWER = {"random": 0.0, "sqrt": 0.5, "balanced": 1.0}


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = calibrated_probabilities(logits, "logits", temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_RANGE`` that minimises the NLL of softmax(logits / T); golden-section search on log T."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs labelled validation images")
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):  # NLL is unimodal in log T: the bracket shrinks to ~1e-12
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(round(np.exp((lo + hi) / 2), 4))


def training_prior(labels: np.ndarray, num_classes: int, sampler: str = "random",
                   targets: np.ndarray | None = None) -> tuple[float, ...]:
    """The class frequencies a model trained on these labels saw: each image's target (its one-hot label, or its
    vote distribution) weighted by the sampler's per-image weight."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.maximum(counts, 1.0)[labels] ** -SAMPLER_POWER[sampler]
    rows = np.asarray(targets, np.float64) if targets is not None else np.eye(num_classes)[labels]
    prior = (rows * weights[:, None]).sum(0)
    prior = np.maximum(prior / prior.sum(), 1e-4)  # a class never seen still gets a finite log
    return tuple(round(float(p), 6) for p in prior / prior.sum())


def fit_prior_correction(logits: np.ndarray, labels: np.ndarray, temperature: float, prior: tuple[float, ...],
                         kind: str = "logits") -> dict:
    """The tau of softmax(logits / T - tau * log(prior)) picked on validation (``PRIOR_CORRECTION_GRID``), and the
    validation scores of every tau tried."""
    classes = [str(k) for k in range(np.asarray(logits).shape[1])]
    log_prior = np.log(np.asarray(prior, np.float32))
    rows = []
    for tau in PRIOR_CORRECTION_GRID:
        pred = calibrated_probabilities(logits, kind, temperature, tau * log_prior if tau else None).argmax(1)
        m = classification_metrics(labels, pred, classes)
        rows.append({"tau": tau, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "balanced_accuracy": m["balanced_accuracy"]})
    floor = rows[0]["accuracy"] - ACCURACY_FLOOR
    best = max((r for r in rows if r["accuracy"] >= floor), key=lambda r: (r["macro_f1"] + r["balanced_accuracy"]) / 2)
    return {"prior_correction": best["tau"], "accuracy_floor": floor, "grid": rows}


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and count; plus the ECE and the max gap."""
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    ece = mce = 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if n:
            gap = abs(float(conf[mask].mean()) - float(correct[mask].mean()))
            ece += gap * n / len(conf)
            mce = max(mce, gap)
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                     "confidence": float(conf[mask].mean()) if n else None,
                     "accuracy": float(correct[mask].mean()) if n else None})
    return {"bins": rows, "ece": float(ece), "mce": float(mce), "mean_confidence": float(conf.mean()),
            "accuracy": float(correct.mean())}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float, kind: str = "logits") -> dict:
    """ECE and NLL before (T = 1) and after (the fitted T), with the reliability bins of both."""
    before = reliability(calibrated_probabilities(logits, kind, 1.0), labels)
    after = reliability(calibrated_probabilities(logits, kind, temperature), labels)
    return {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"],
            "reliability_before": before, "reliability_after": after}


def plot_reliability(curves: dict[str, dict], path: Path, title: str = "") -> Path:
    """One panel per model: accuracy against confidence per bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.2), squeeze=False)
    for ax, (name, summary) in zip(axes[0], curves.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
        for key, colour, label in (("reliability_before", "tab:red", "T = 1"),
                                   ("reliability_after", "tab:blue", f"T = {summary['temperature']:.2f}")):
            r = summary[key]
            pts = [(b["confidence"], b["accuracy"], b["count"]) for b in r["bins"] if b["count"]]
            x, y, n = (np.asarray(v) for v in zip(*pts))
            ax.plot(x, y, marker="o", color=colour, label=f"{label}: ECE {r['ece']:.3f}")
            ax.scatter(x, y, s=10 + 200 * n / n.max(), color=colour, alpha=0.3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy in the bin",
               title=f"{name}\n(marker area: images per bin)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
