"""Classification metrics from a confusion matrix (numpy only, shared by training and benchmark)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes, in the order of the class list."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], other: str | None = None) -> dict:
    """Accuracy, macro-F1, balanced accuracy (mean recall) and per-class figures over ``classes``.

    ``other``: a name for predictions outside ``classes`` (index ``len(classes)``), as when a model with more classes
    than a data set is scored on it: such a prediction is always wrong, and shows as the last confusion column.
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k + (other is not None))[:k]  # rows: true classes only
    result = _scores(cm[:, :k], cm.sum(1).astype(float), classes)
    result["confusion_matrix"] = cm.tolist()
    if other is not None:
        result["other"] = other
    return result


def _scores(cm: np.ndarray, actual: np.ndarray, classes: list[str]) -> dict:
    k = len(classes)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    total = actual.sum()
    present = actual > 0
    scored = present | (predicted > 0)  # as scikit-learn: a class neither in the split nor predicted has no F1 to count
    return {
        "num_samples": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[scored].mean()) if scored.any() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
    }
