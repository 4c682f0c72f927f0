"""``fer-train --folds K --group-by REGEX``: K-fold cross-validation by groups (people, sequences), the protocol that
CK+, JAFFE and KDEF results are reported under.

Every fold is an ordinary run in ``RUN/foldN/``: it trains on the other folds (best.pt chosen on a group-disjoint
validation split carved from them) and is tested once on its own fold, whose people it never saw. ``RUN/cv.json``,
``cv.md`` and ``cv.png`` give each fold's test figures and their mean ± standard deviation (over folds, ddof 1) and the
confusion matrix of all folds' test images pooled. The same command again continues: finished folds are kept, a
started one resumes from its last.pt, over the same image files (names and labels). ``--fold N`` trains that fold
alone, in the same folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from fer_runtime.errors import OutputError
from fer_runtime.metrics import classification_metrics
from fer_runtime.outputs import atomic_write_text, check_output_dir
from fer_train.checkpoint import load_checkpoint
from fer_train.config import TrainConfig
from fer_train.data_prep import discover_splits
from fer_train.metrics import plot_confusion_matrix
from fer_train.run_config import InvocationFlags, merged_config, saved_config
from fer_train.run_folder import PREDICTION_FIELDS, PREDICTIONS, write_predictions
from fer_train.run_status import run_status

FIGURES = ("accuracy", "macro_f1", "balanced_accuracy")
PLACEMENT = ("fold", "threads", "device", "no_progress", "cache_dir", "data_root", "out_dir", "name")  # may differ
# (data_root: the files are compared by their names and labels, so a set that moved goes on)


def cross_validate(cfg: TrainConfig, flags: InvocationFlags, train_run: Callable, only: int | None = None,
                   again: str = "the same command") -> Path:
    """Train (or continue) every fold's run, or fold ``only``, then write the summary once every fold is finished;
    returns the cross-validation folder (``cfg.name`` under ``cfg.out_dir``). --stop-after counts the epochs of this
    sitting across folds; ``again`` is the command that goes on, for the messages."""
    wanted = {k: v for k, v in asdict(cfg).items() if k not in PLACEMENT}
    wanted["data"] = data_fingerprint(cfg)
    top, fresh = _cv_folder(cfg, flags, wanted, only)
    ours = not fresh  # the folder holds this cross-validation: its time and summary go there

    def start() -> None:  # when the first fold's data and model are known to work: a failed start leaves all as it was
        nonlocal ours
        if top.exists():
            shutil.rmtree(top)
        top.mkdir(parents=True)
        atomic_write_text(top / "cv_config.json", json.dumps(wanted, indent=2))
        ours = True

    left = flags.stop_after
    for fold in [only] if only else range(1, cfg.folds + 1):
        fold_dir = top / f"fold{fold}"
        anew = fresh or (only is not None and flags.overwrite)  # --fold N --overwrite: that fold alone, anew
        status = "new" if anew else run_status(fold_dir)
        if status != "finished" and left == 0:
            break
        print(f"fer-train: cross-validation fold {fold}/{cfg.folds} ({status}) in {fold_dir}", flush=True)
        if status == "finished":
            continue
        t0 = time.monotonic()
        try:
            if status == "started":
                state = load_checkpoint(fold_dir / "last.pt")
                before = int(state.get("epoch", 0))
                result = train_run(merged_config({}, saved_config(state)),
                                   InvocationFlags(resume=str(fold_dir / "last.pt"), stop_after=left), state)
            else:
                before = 0
                result = train_run(replace(cfg, fold=fold, out_dir=str(top), name=f"fold{fold}"),
                                   InvocationFlags(stop_after=left, overwrite=anew), None, start if fresh else None)
                fresh = False
        finally:
            if ours:
                _add_seconds(top, time.monotonic() - t0)
        if left is not None:
            left -= (result.history[-1]["epoch"] if result.history else before) - before
        if run_status(fold_dir) != "finished":  # --stop-after ended this sitting
            break
    if not ours:
        print(f"fer-train: no fold trained; {top} is as it was", flush=True)
    else:
        _summary_once_finished(cfg, top, only, again)
    return top


def _summary_once_finished(cfg: TrainConfig, top: Path, only: int | None, again: str) -> None:
    """cv.json/.md/.png once every fold is finished; else which are not, and how to go on."""
    unfinished = [k for k in range(1, cfg.folds + 1) if run_status(top / f"fold{k}") != "finished"]
    if unfinished:
        rest = " (without --fold: every fold)" if only else ""
        print(f"fer-train: fold {', '.join(map(str, unfinished))} of {cfg.folds} not finished yet: {again} goes on"
              f"{rest}", flush=True)
        return
    summary = summarise([_fold_row(k, top / f"fold{k}") for k in range(1, cfg.folds + 1)], cfg, _add_seconds(top, 0.0))
    predictions = held_out_predictions(top, cfg.folds)
    if predictions is not None:
        write_predictions(top / PREDICTIONS, predictions, ["fold", *PREDICTION_FIELDS[1:]])
        summary["confident_mistakes"] = confident_mistakes(predictions)
    write_summary(summary, top)
    mean, std = summary["mean"]["accuracy"], summary["std"]["accuracy"]
    print(f"fer-train: {cfg.folds}-fold cross-validation by {cfg.group_by!r}: test accuracy {mean:.4f} ± {std:.4f}, "
          f"macro-F1 {summary['mean']['macro_f1']:.4f} ± {summary['std']['macro_f1']:.4f}; {top / 'cv.md'}")


def data_fingerprint(cfg: TrainConfig) -> str:
    """sha256 of the image files' names and labels the folds are dealt from, found as fold 1's run finds them: a
    continued cross-validation must deal the same people to the same folds. A grouping that cannot make the folds
    fails here, before anything is written."""
    manifest, _ = discover_splits(replace(cfg, fold=1))  # its warnings: each fold's run gives them
    items = sorted(item for split in manifest.splits.values() for item in split)
    return hashlib.sha256(json.dumps([manifest.classes, items]).encode()).hexdigest()


def _cv_folder(cfg: TrainConfig, flags: InvocationFlags, wanted: dict, only: int | None) -> tuple[Path, bool]:
    """RUN, and whether it starts afresh: new, or replaced with --overwrite (once the first fold starts), else one this
    same cross-validation began on the same files (its cv_config.json agrees); --fold N --overwrite replaces that fold
    of this same cross-validation only."""
    check_output_dir(cfg.out_dir)
    top = Path(cfg.out_dir) / cfg.name
    if not top.exists() or not any(top.iterdir()) or (flags.overwrite and only is None):
        return top, True
    saved_file = top / "cv_config.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    replace_it = "replace it with --overwrite" + (" (without --fold)" if only else "")
    if saved is None:
        raise OutputError(f"{top} already holds another run: pick another --name, or {replace_it}")
    if "data" not in saved:
        raise OutputError(f"{top} holds a cross-validation of an earlier fer-train, which kept no record of its image "
                          f"files: pick another --name, or {replace_it}")
    wanted = json.loads(json.dumps(wanted))
    differ = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
    if differ:
        what = ", ".join("its image files or their labels" if k == "data" else f"--{k.replace('_', '-')}" for k in differ)
        raise OutputError(f"{top} holds a cross-validation that differs in {what}: give its own options to continue "
                          f"it, pick another --name, or {replace_it}")
    return top, False


def _add_seconds(top: Path, seconds: float) -> float:
    """The cross-validation's wall time over all its sittings (cv_time.json), ``seconds`` more; returns the total."""
    path = top / "cv_time.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_text(path, json.dumps({"seconds": round(total, 3)}))
    return total


def _fold_row(fold: int, fold_dir: Path) -> dict:
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    test, val = metrics["test"], metrics["val"]
    return {"fold": fold, "test_images": test["num_samples"], "best_epoch": metrics.get("best", {}).get("epoch"),
            **{k: test[k] for k in FIGURES}, "val_accuracy": val["accuracy"], "classes": test["classes"],
            "confusion_matrix": test["confusion_matrix"]}


def held_out_predictions(top: Path, folds: int) -> list[dict] | None:
    """Every image's prediction by the fold that held it out (its fold's test split), or None when a fold's run
    kept no predictions.csv (a fer-train before it wrote one)."""
    rows = []
    for fold in range(1, folds + 1):
        path = top / f"fold{fold}" / PREDICTIONS
        if not path.is_file():
            print(f"fer-train: {path} is missing (an earlier fer-train trained that fold): no {PREDICTIONS} for the "
                  "cross-validation", flush=True)
            return None
        with path.open(newline="") as fh:
            rows += [{"fold": fold, **{k: r[k] for k in PREDICTION_FIELDS[1:]}} for r in csv.DictReader(fh)
                     if r["split"] == "test"]
    return rows


def confident_mistakes(rows: list[dict], top: int = 10) -> list[dict]:
    """The held-out images the models got wrong most confidently: where a label is most worth a second look."""
    wrong = [r for r in rows if r["predicted"] != r["label"]]
    return sorted(wrong, key=lambda r: -float(r["p_predicted"]))[:top]


def summarise(rows: list[dict], cfg: TrainConfig, seconds: float) -> dict:
    """Each fold's figures, their mean and standard deviation, and the pooled test confusion matrix's metrics."""
    figures = (*FIGURES, "val_accuracy")
    cm = np.sum([np.asarray(r["confusion_matrix"]) for r in rows], axis=0)
    true, pred = np.nonzero(cm)
    counts = cm[true, pred]
    pooled = classification_metrics(np.repeat(true, counts), np.repeat(pred, counts), rows[0]["classes"])
    return {
        "folds": cfg.folds, "group_by": cfg.group_by, "init": cfg.init, "arch": cfg.arch, "epochs": cfg.epochs,
        "lr": cfg.lr, "freeze": cfg.freeze, "monitor": cfg.monitor, "seed": cfg.seed, "seconds": round(seconds, 1),
        "per_fold": [{k: v for k, v in r.items() if k not in ("classes", "confusion_matrix")} for r in rows],
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in figures},
        "std": {k: float(np.std([r[k] for r in rows], ddof=1)) for k in figures},
        "pooled": pooled,
    }


def write_summary(summary: dict, top: Path) -> None:
    atomic_write_text(top / "cv.json", json.dumps(summary, indent=2))
    atomic_write_text(top / "cv.md", summary_markdown(summary))
    plot_confusion_matrix(summary["pooled"], top / "cv.png", title=f"{summary['folds']} folds pooled: accuracy "
                          f"{summary['pooled']['accuracy']:.4f}, macro-F1 {summary['pooled']['macro_f1']:.4f}")


def summary_markdown(s: dict) -> str:
    lines = [f"# {s['folds']}-fold cross-validation by `{s['group_by']}`", "",
             f"init `{s['init'] or 'none (random weights)'}`, arch `{s['arch']}`, {s['epochs']} epochs, lr {s['lr']:g}, "
             f"freeze {s['freeze']}, seed {s['seed']}; {s['seconds']:.0f} s in all. Each fold's test split is people "
             "its run never saw; " + ("best.pt is its last epoch (`--monitor last`)" if s["monitor"] == "last" else
                                      f"best.pt is chosen by val {s['monitor']} on a split carved from the other folds")
             + ".", "",
             "| fold | test images | best epoch | test accuracy | test macro-F1 | test balanced acc. | val accuracy |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["per_fold"]:
        lines.append(f"| {r['fold']} | {r['test_images']} | {r['best_epoch']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} "
                     f"| {r['balanced_accuracy']:.4f} | {r['val_accuracy']:.4f} |")
    m, d = s["mean"], s["std"]
    lines.append(f"| **mean ± std** | | | **{m['accuracy']:.4f} ± {d['accuracy']:.4f}** | {m['macro_f1']:.4f} ± "
                 f"{d['macro_f1']:.4f} | {m['balanced_accuracy']:.4f} ± {d['balanced_accuracy']:.4f} | "
                 f"{m['val_accuracy']:.4f} ± {d['val_accuracy']:.4f} |")
    lines += ["", f"All folds' test images pooled: accuracy {s['pooled']['accuracy']:.4f}, macro-F1 "
              f"{s['pooled']['macro_f1']:.4f} (confusion matrix: cv.png)."]
    if "confident_mistakes" in s:
        lines += ["", f"Every image's held-out prediction: {PREDICTIONS}. The most confident mistakes, whose labels are "
                  "worth a second look:", "", "| fold | file | label | predicted | p(predicted) |", "|---:|---|---|---|---:|"]
        lines += [f"| {r['fold']} | {r['file']} | {r['label']} | {r['predicted']} | {r['p_predicted']} |"
                  for r in s["confident_mistakes"]]
    return "\n".join(lines) + "\n"
