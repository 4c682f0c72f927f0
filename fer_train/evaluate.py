"""fer-eval: score a checkpoint on a split, reusing the split manifest saved with the run."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from fer_runtime.data import DataError, load_split, run_manifest
from fer_runtime.data.report import has_copy_in
from fer_runtime.outputs import (
    FerArgumentParser,
    HelpFormatter,
    OutputError,
    atomic_write_text,
    check_output_dir,
    write_error,
)
from fer_train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fer_train.engine import predict_logits, score_logits
from fer_train.metrics import metrics_table, plot_confusion_matrix


def build_parser() -> argparse.ArgumentParser:
    p = FerArgumentParser("fer-eval", description="Evaluate a fer-train checkpoint, or an ensemble of them.",
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, nargs="+", help="RUN/best.pt; several: an ensemble (mean of softmax)")
    p.add_argument("--data-root", default=None, help="default: the data root the run was trained on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score")
    p.add_argument("--tta", default="none", choices=["none", "flip", "tencrop"], help="test-time augmentation")
    p.add_argument("--no-dedup", action="store_true",
                   help="skip the second figure on the images that have no pixel-identical copy in train")
    p.add_argument("--out-dir", default=None, help="where to write metrics (default: beside the checkpoint)")
    p.add_argument("--no-ema", action="store_true", help="use raw weights even if the checkpoint has EMA weights")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: ~/.cache/fer-toolchain)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: all cores, torch's own default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads < 0:
            raise ValueError(f"--threads must be 0 (all cores) or more, got {args.threads}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device here (a CPU build of torch, no driver, or no GPU "
                             "visible); --device auto or cpu runs on the CPU")  # fmt: skip
        check_output_dir(args.out_dir or Path(args.ckpt[0]).resolve().parent)
        states = [load_checkpoint(c) for c in args.ckpt]
        members = [model_from_checkpoint(st, prefer_ema=not args.no_ema) for st in states]
        contract = members[0][1]
        for path, (_, other) in zip(args.ckpt[1:], members[1:]):
            if (other.classes, other.channels, other.input_size) != (contract.classes, contract.channels,
                                                                   contract.input_size):  # fmt: skip
                raise DataError(f"{path} does not share classes, channels and input size with {args.ckpt[0]}")
        manifest = run_manifest(states[0].get("manifest"), args.data_root, states[0].get("train_args", {}))
        if manifest.classes != list(contract.classes):
            raise DataError(f"the model's classes {list(contract.classes)} differ from the data's {manifest.classes}")
        if args.split not in manifest.splits:
            raise DataError(f"split '{args.split}' not in this data (has {', '.join(manifest.splits)})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_split(manifest, args.split, contract.channels, contract.input_size,
                              cache_dir=args.cache_dir, strict=args.strict)  # fmt: skip
            train = None
            if args.split != "train" and not args.no_dedup and "train" in manifest.splits:
                train = load_split(manifest, "train", contract.channels, contract.input_size, cache_dir=args.cache_dir)
        for w in caught:
            print(f"fer-eval: warning: {w.message}", file=sys.stderr)
    except (CheckpointError, DataError, OutputError, ValueError) as exc:
        print(f"fer-eval: error: {exc}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    images = torch.from_numpy(np.ascontiguousarray(data.images))
    # the ensemble averages the members' probabilities
    probs = torch.stack([predict_logits(m.to(device), images, c, device, tta=args.tta).softmax(1) for m, c in members])
    log_probs = probs.mean(0).clamp_min(1e-12).log()
    labels = torch.from_numpy(data.labels)
    metrics, _ = score_logits(log_probs, labels, list(contract.classes))
    metrics.update(split=args.split, tta=args.tta, checkpoints=[str(Path(c).resolve()) for c in args.ckpt],
                   skipped_files=len(data.skipped), data_root=manifest.root)  # fmt: skip
    if train is not None:
        unseen = torch.from_numpy(~has_copy_in(train.images, data.images))
        if unseen.any():
            dedup, _ = score_logits(log_probs[unseen], labels[unseen], list(contract.classes))
            metrics["without_train_copies"] = {"num_samples": int(unseen.sum()), "accuracy": dedup["accuracy"],
                                               "macro_f1": dedup["macro_f1"]}  # fmt: skip
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.ckpt[0]).resolve().parent
    stem = f"eval_{args.split}" + ("" if args.tta == "none" else f"_{args.tta}")
    stem += f"_ensemble{len(members)}" if len(members) > 1 else ""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / f"{stem}.json", json.dumps(metrics, indent=2))
        atomic_write_text(out_dir / f"{stem}.md", f"# {stem}\n\n{metrics_table(metrics)}\n")
        plot_confusion_matrix(metrics, out_dir / f"{stem}_confusion_matrix.png", title=f"{args.split} ({args.tta})")
    except OSError as exc:  # a full disk: each file is whole or absent (atomic writes)
        print(f"fer-eval: error: {write_error(exc)}", file=sys.stderr)
        return 2
    print(metrics_table(metrics))
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} ({metrics['num_samples']} "
          f"images, tta {args.tta}, {len(members)} model(s)) -> {out_dir / (stem + '.json')}")  # fmt: skip
    if "without_train_copies" in metrics:
        d = metrics["without_train_copies"]
        print(f"{args.split} without images that have a pixel-identical copy in train: accuracy {d['accuracy']:.4f} "
              f"macro-F1 {d['macro_f1']:.4f} ({d['num_samples']} images)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
