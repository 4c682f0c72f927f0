"""fer-eval: score a checkpoint on a split, reusing the split manifest saved with the run."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from fer_train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fer_train.data import DataError, SplitManifest, atomic_write_text, discover, load_split
from fer_train.engine import predict_logits, score_logits
from fer_train.metrics import metrics_table, plot_confusion_matrix
from fer_train.shift import training_view, with_inference_blur


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("fer-eval", description="Evaluate a fer-train checkpoint, or an ensemble of them.")
    p.add_argument("--ckpt", required=True, nargs="+", help="RUN/best.pt; several: an ensemble (mean of softmax)")
    p.add_argument("--data-root", default=None, help="default: the data root the run was trained on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--tta", default="none", choices=["none", "flip", "tencrop"], help="test-time augmentation")
    p.add_argument("--input-blur", type=float, default=None, metavar="SIGMA",
                   help="score with this inference blur instead of the contract's (training deconvolution kept); "
                        "pick it on val, then export it with fer-export --input-blur")  # fmt: skip
    p.add_argument("--out-dir", default=None, help="where to write metrics (default: beside the checkpoint)")
    p.add_argument("--no-ema", action="store_true", help="use raw weights even if the checkpoint has EMA weights")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def resolve_manifest(state: dict, data_root: str | None) -> SplitManifest:
    """The run's own manifest when its files are under the root; else the same split rules anew."""
    saved = SplitManifest.from_dict(state["manifest"]) if "manifest" in state else None
    if saved is not None and (data_root is None or Path(data_root).resolve() == Path(saved.root)):
        return saved
    if data_root is None:
        raise DataError("this checkpoint has no split manifest: pass --data-root")
    if saved is not None:
        root = Path(data_root)
        if all((root / rel).exists() for items in saved.splits.values() for rel, _ in items[:50]):
            saved.root = str(root.resolve())
            return saved
    args = state.get("train_args", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = discover(data_root, args.get("protocol"), args.get("val_split"), args.get("test_split"), args.get("seed", 0))
    for w in caught:
        print(f"fer-eval: warning: {w.message}", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        states = [load_checkpoint(c) for c in args.ckpt]
        members = [model_from_checkpoint(st, prefer_ema=not args.no_ema) for st in states]
        if args.input_blur is not None:
            if args.split == "train":
                raise DataError("--input-blur changes inference inputs; the train split is scored as trained")
            members = [(m, with_inference_blur(c, args.input_blur)) for m, c in members]
        contract = members[0][1]
        for path, (_, other) in zip(args.ckpt[1:], members[1:]):
            if (other.classes, other.channels, other.input_size) != (contract.classes, contract.channels,
                                                                   contract.input_size):  # fmt: skip
                raise DataError(f"{path} does not share classes, channels and input size with {args.ckpt[0]}")
        manifest = resolve_manifest(states[0], args.data_root)
        if manifest.classes != list(contract.classes):
            raise DataError(f"the model's classes {list(contract.classes)} differ from the data's {manifest.classes}")
        if args.split not in manifest.splits:
            raise DataError(f"split '{args.split}' not in this data (has {', '.join(manifest.splits)})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_split(manifest, args.split, contract.channels, contract.input_size,
                              cache_dir=args.cache_dir, strict=args.strict)  # fmt: skip
        for w in caught:
            print(f"fer-eval: warning: {w.message}", file=sys.stderr)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"fer-eval: error: {exc}", file=sys.stderr)
        return 2
    views = [data.images] * len(members)
    if args.split == "train" and any(c.input_blur > 0 for _, c in members):
        # input_blur makes other images look like the training images; blurring these again would understate
        # accuracy. The train split is scored as the model trained on it (deconvolved when the contract says so).
        views = [training_view(data.images, c) for _, c in members]
        members = [(m, c.replace(input_blur=0.0, input_deconv=0.0)) for m, c in members]
        print("fer-eval: note: train split scored without the contract's input_blur (it imitates these images)",
              file=sys.stderr)  # fmt: skip
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    # each member conditions its inputs by its own contract; the ensemble averages probabilities
    probs = torch.stack([predict_logits(m.to(device), torch.from_numpy(np.ascontiguousarray(v)), c, device,
                                        tta=args.tta).softmax(1) for (m, c), v in zip(members, views)])  # fmt: skip
    metrics, _ = score_logits(probs.mean(0).clamp_min(1e-12).log(), torch.from_numpy(data.labels), list(contract.classes))
    blurs = [c.input_blur for _, c in members]
    metrics.update(split=args.split, tta=args.tta, input_blur=blurs, checkpoints=[str(Path(c).resolve()) for c in args.ckpt],
                   skipped_files=len(data.skipped), data_root=manifest.root)  # fmt: skip
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.ckpt[0]).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"eval_{args.split}" + ("" if args.tta == "none" else f"_{args.tta}")
    stem += "" if args.input_blur is None else f"_blur{args.input_blur:g}"
    stem += f"_ensemble{len(members)}" if len(members) > 1 else ""
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(metrics, indent=2))
    atomic_write_text(out_dir / f"{stem}.md", f"# {stem}\n\n{metrics_table(metrics)}\n")
    plot_confusion_matrix(metrics, out_dir / f"{stem}_confusion_matrix.png", title=f"{args.split} ({args.tta})")
    print(metrics_table(metrics))
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} ({metrics['num_samples']} "
          f"images, tta {args.tta}, input blur {'/'.join(f'{b:g}' for b in blurs)}, {len(members)} model(s)) "
          f"-> {out_dir / (stem + '.json')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
