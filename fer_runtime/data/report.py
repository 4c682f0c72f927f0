"""Look at the data before training on it: counts, unreadable files, formats, sharpness, brightness, duplicates.

The sharpness comparison is what found the blurred FER2013 training copy; it now warns and changes
nothing. Duplicates are pixel-identical images after decoding to the model's input: within train (they
weigh some faces double) and between train and val/test (a test image seen in training inflates accuracy).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fer_runtime.data.decode import DecodedSplit
from fer_runtime.data.splits import SplitManifest
from fer_runtime.outputs import atomic_write_text

SHARPNESS_RATIO_WARN = 1.5  # splits whose median sharpness differs more than this get a warning


def image_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]


def has_copy_in(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per image of ``images``: does a pixel-identical image exist in ``reference``."""
    seen = set(image_hashes(reference))
    return np.asarray([h in seen for h in image_hashes(images)], dtype=bool)


def duplicate_summary(decoded: dict[str, DecodedSplit]) -> dict:
    """Exact duplicates within train, and val/test images with a copy in train (with the same label or not)."""
    out: dict = {}
    train = decoded.get("train")
    if train is None:
        return out
    hashes = image_hashes(train.images)
    groups: dict[bytes, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    dup_groups = [g for g in groups.values() if len(g) > 1]
    out["train"] = {
        "images": len(hashes),
        "unique": len(groups),
        "redundant_copies": len(hashes) - len(groups),  # images that repeat an earlier one
        "images_in_duplicate_groups": sum(len(g) for g in dup_groups),
        "duplicate_groups": len(dup_groups),
        "groups_with_conflicting_labels": sum(len(set(train.labels[g].tolist())) > 1 for g in dup_groups),
    }
    first_label = {h: int(train.labels[g[0]]) for h, g in groups.items()}
    labels_of = {h: set(train.labels[g].tolist()) for h, g in groups.items()}
    for split, d in decoded.items():
        if split == "train":
            continue
        split_hashes = image_hashes(d.images)
        in_train = [h in first_label for h in split_hashes]
        same = [h in labels_of and int(y) in labels_of[h] for h, y in zip(split_hashes, d.labels)]
        out[split] = {"images": len(split_hashes), "with_copy_in_train": int(sum(in_train)),
                      "with_copy_in_train_same_label": int(sum(same))}
    return out


def sharpness_values(images: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian per image (N x C x H x W uint8, channels averaged)."""
    x = images.astype(np.float32).mean(1)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.abs(lap).mean((1, 2))


def image_statistics(images: np.ndarray, sample: int = 4000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pick = images[rng.choice(len(images), size=min(sample, len(images)), replace=False)]
    sharp, bright = sharpness_values(pick), pick.astype(np.float32).mean((1, 2, 3))
    return {"sampled": len(pick), "sharpness_median": float(np.median(sharp)), "sharpness_p10": float(np.percentile(sharp, 10)),
            "sharpness_p90": float(np.percentile(sharp, 90)), "brightness_mean": float(bright.mean()),
            "brightness_std": float(bright.std())}


def data_report(manifest: SplitManifest, decoded: dict[str, DecodedSplit]) -> dict:
    """Everything the report shows, as one JSON-able dict; ``warnings`` lists what looks wrong."""
    stats = {s: image_statistics(d.images) for s, d in decoded.items()}
    report = {
        "root": manifest.root, "layout": manifest.layout, "protocol": manifest.protocol,
        "label_mode": manifest.label_mode, "classes": manifest.classes, "notes": manifest.notes,
        "images_per_class": {s: dict(zip(manifest.classes, np.bincount(d.labels, minlength=len(manifest.classes)).tolist()))
                             for s, d in decoded.items()},
        "unreadable": {s: [list(x) for x in d.skipped] for s, d in decoded.items()},
        "formats": {s: d.formats for s, d in decoded.items()},
        "statistics": stats,
        "duplicates": duplicate_summary(decoded),
        "warnings": [],
    }
    if "train" in stats:
        base = stats["train"]["sharpness_median"]
        for split, st in stats.items():
            ratio = st["sharpness_median"] / max(base, 1e-6)
            if split != "train" and not 1 / SHARPNESS_RATIO_WARN <= ratio <= SHARPNESS_RATIO_WARN:
                report["warnings"].append(
                    f"{split} images are {ratio:.1f}x as sharp as train (median mean |Laplacian| "
                    f"{st['sharpness_median']:.1f} vs {base:.1f}): the splits do not look alike; check the data "
                    "(a blurred or resampled copy?) before trusting figures on it")
    for split, dup in report["duplicates"].items():
        if split != "train" and dup["with_copy_in_train"]:
            report["warnings"].append(f"{dup['with_copy_in_train']} of {dup['images']} {split} images have a "
                                      "pixel-identical copy in train")
    unreadable = sum(len(v) for v in report["unreadable"].values())
    if unreadable:
        report["warnings"].append(f"{unreadable} unreadable files skipped")
    return report


def report_markdown(r: dict) -> str:
    classes = r["classes"]
    lines = [f"# Data report: {r['root']}", "", f"Layout `{r['layout']}`, protocol `{r['protocol']}`"
             + (f", label mode `{r['label_mode']}`" if r.get("label_mode") else ""), ""]
    lines += [f"- {n}" for n in r["notes"]] + [""]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in r["warnings"]] + [""]
    lines += ["## Images per class", "", "| split | " + " | ".join(classes) + " | total |",
              "|---|" + "---:|" * (len(classes) + 1)]
    for split, per in r["images_per_class"].items():
        lines.append(f"| {split} | " + " | ".join(str(per[c]) for c in classes) + f" | {sum(per.values())} |")
    lines += ["", "## Image statistics (a sample per split)", "",
              "| split | unreadable | formats | sharpness median (p10-p90) | brightness mean ± std |",
              "|---|---:|---|---:|---:|"]
    for split, st in r["statistics"].items():
        formats = ", ".join(f"{k}: {v}" for k, v in sorted(r["formats"][split].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {split} | {len(r['unreadable'][split])} | {formats} | {st['sharpness_median']:.1f} "
                     f"({st['sharpness_p10']:.1f}-{st['sharpness_p90']:.1f}) | {st['brightness_mean']:.1f} ± "
                     f"{st['brightness_std']:.1f} |")
    dup = r["duplicates"]
    if dup:
        t = dup["train"]
        lines += ["", "## Exact duplicates (pixel-identical after decoding)", "",
                  f"- train: {t['images_in_duplicate_groups']} images in {t['duplicate_groups']} groups of identical "
                  f"images ({t['redundant_copies']} redundant copies; {t['groups_with_conflicting_labels']} groups "
                  "disagree on the label)"]
        for split, d in dup.items():
            if split != "train":
                lines.append(f"- {split}: {d['with_copy_in_train']} of {d['images']} images have a copy in train "
                             f"({d['with_copy_in_train_same_label']} with the same label)")
    return "\n".join(lines) + "\n"


def write_data_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "data_report.json", out_dir / "data_report.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=2))
    atomic_write_text(paths[1], report_markdown(report))
    return paths
