"""Classification metrics from a confusion matrix, and their plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_runtime.metrics import classification_metrics, confusion_matrix
from fer_runtime.outputs import atomic_path

__all__ = ["classification_metrics", "confusion_matrix", "metrics_table", "plot_confusion_matrix", "plot_curves"]


def metrics_table(metrics: dict) -> str:
    """Markdown table of per-class figures, in the class order the metrics were computed in."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for c in metrics["classes"]:
        m = metrics["per_class"][c]
        lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines.append(f"| **accuracy** | | | {metrics['accuracy']:.4f} | {metrics['num_samples']} |")
    lines.append(f"| **macro-F1** | | | {metrics['macro_f1']:.4f} | |")
    return "\n".join(lines)


def plot_confusion_matrix(metrics: dict, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = metrics["classes"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, monitor: str | None = None) -> None:
    """Is the model still learning, and is it overfitting? Losses left, validation metrics right, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    style = {"marker": "o", "markersize": 3}  # a run of one epoch still shows its points
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], label="train loss (augmented batches)", **style)
    a.plot(epochs, [h["val_loss"] for h in history], label="val loss", **style)
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss: val turning up while train falls = overfitting")
    b.plot(epochs, [h["val_accuracy"] for h in history], label="val accuracy", **style)
    b.plot(epochs, [h["val_macro_f1"] for h in history], label="val macro-F1", **style)
    b.set(xlabel="epoch", ylabel="score", ylim=(0, 1), title="validation")
    if monitor and history and f"val_{monitor}" in history[0]:
        key = f"val_{monitor}"
        best = max(history, key=lambda h: h[key])
        b.axvline(best["epoch"], color="grey", ls="--", lw=1)
        b.annotate(f"best {monitor} {best[key]:.4f}\n(epoch {best['epoch']}, best.pt)", (best["epoch"], best[key]),
                   xytext=(6, -30), textcoords="offset points", fontsize=8)
    for ax in (a, b):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) <= 10:
            ax.set_xticks(epochs)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
