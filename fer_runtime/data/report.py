"""Look at the data before training on it: counts, unreadable files, formats, sharpness, brightness, duplicates,
near-duplicates, and people or recordings that cross the splits.

The sharpness comparison is what found the blurred FER2013 training copy; it now warns and changes
nothing. Duplicates are pixel-identical images after decoding to the model's input: within train (they
weigh some faces double) and between train and val/test (a test image seen in training inflates accuracy).
Near-duplicates are val/test images whose perceptual hash is close to a training image's: the next frame of the same
recording, as in CK+, is not pixel-identical but tells the model the answer just the same. Groups (``--group-by``) and
what look like recordings (names that differ only in a trailing frame number) are counted where they cross splits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fer_runtime.data.decode import DecodedSplit
from fer_runtime.data.groups import below_class, compile_pattern, crossing, group_key, sequence_key
from fer_runtime.data.splits import SplitManifest
from fer_runtime.outputs import atomic_write_text

SHARPNESS_RATIO_WARN = 1.5  # splits whose median sharpness differs more than this get a warning
HASH_SIDE = 16  # a 256-bit difference hash
# Near: at most this many of the 256 bits differ. On CK+ it pairs 94% of the frames of one recording with each other,
# under 1% of one person's other recordings, and no two people (benchmarks/results: docs/data.md).
NEAR_BITS = 24
# Names "look like frames of recordings" when this share of images shares a recording with another image, at several
# recordings a folder on average (numbered files, img_0001.png ..., make one "recording" a folder).
SEQUENCE_SHARE, RECORDINGS_PER_FOLDER = 0.3, 2


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """Difference hashes, N x 32 bytes: whether each cell of a 17x16 shrunken grey image is brighter than its left
    neighbour. Robust to small shifts of brightness and to JPEG; close for the next frame of a recording."""
    import cv2

    grey = images.astype(np.float32).mean(1)
    small = np.stack([cv2.resize(im, (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA) for im in grey])
    return np.packbits((small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), -1), axis=1)


def nearest_within(queries: np.ndarray, reference: np.ndarray, bits: int = NEAR_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Per query hash: the smallest bit distance to a reference hash when it is at most ``bits`` (else ``bits + 1``),
    and which reference hash that is.

    Only candidates are compared: the hashes are cut into ``bits + 1`` bands, and two hashes that differ in at most
    ``bits`` bits agree on at least one whole band (pigeonhole), so every neighbour within ``bits`` is found exactly."""
    table = np.asarray([bin(i).count("1") for i in range(256)], np.uint8)
    ref_bits, query_bits = np.unpackbits(reference, axis=1), np.unpackbits(queries, axis=1)
    width = ref_bits.shape[1] // (bits + 1)
    weights = 1 << np.arange(width, dtype=np.int64)
    candidates: list[list[np.ndarray]] = [[] for _ in range(len(queries))]
    for b in range(bits + 1):
        ref_band = ref_bits[:, b * width : (b + 1) * width] @ weights
        query_band = query_bits[:, b * width : (b + 1) * width] @ weights
        order = np.argsort(ref_band, kind="stable")
        lo, hi = np.searchsorted(ref_band[order], query_band, "left"), np.searchsorted(ref_band[order], query_band, "right")
        for q in np.flatnonzero(hi > lo):
            candidates[q].append(order[lo[q] : hi[q]])
    best, where = np.full(len(queries), bits + 1, np.int64), np.zeros(len(queries), np.int64)
    for q, found in enumerate(candidates):
        if found:
            pool = np.unique(np.concatenate(found))
            distances = table[queries[q] ^ reference[pool]].sum(1, dtype=np.int64)
            k = int(distances.argmin())
            if distances[k] <= bits:
                best[q], where[q] = distances[k], pool[k]
    return best, where


def near_duplicate_summary(decoded: dict[str, DecodedSplit]) -> dict:
    """Val/test images within ``NEAR_BITS`` of a training image's perceptual hash, with examples."""
    train = decoded.get("train")
    if train is None or not len(train.images):
        return {}
    reference = perceptual_hashes(train.images)
    out = {}
    for split, d in decoded.items():
        if split == "train" or not len(d.images):
            continue
        distance, nearest = nearest_within(perceptual_hashes(d.images), reference)
        near = np.flatnonzero(distance <= NEAR_BITS)
        out[split] = {"images": len(d.images), "with_near_copy_in_train": len(near),
                      "examples": [[d.paths[i], train.paths[nearest[i]], int(distance[i])] for i in near[:5]]}
    return out


def crossing_summary(manifest: SplitManifest) -> dict:
    """Look-alike recordings and ``--group-by`` groups with images in more than one split."""
    def in_class(source: str, label: int) -> str:  # the split folder dropped: train/anger/x.png and val/anger/x.png meet
        return f"{manifest.classes[label]}/{below_class(source, manifest.classes[label])}"

    out = {"recordings": crossing(manifest.splits, lambda source, label: sequence_key(in_class(source, label)))}
    rec = out["recordings"]
    folders = {in_class(source, label).rsplit("/", 1)[0] for items in manifest.splits.values() for source, label in items}
    out["names_look_like_recordings"] = bool(rec["images_in_groups"]) and (
        rec["images_sharing_a_group"] >= SEQUENCE_SHARE * rec["images_in_groups"]
        and rec["groups"] >= RECORDINGS_PER_FOLDER * len(folders))
    if manifest.group_by:
        regex = compile_pattern(manifest.group_by)
        out["groups"] = crossing(manifest.splits, lambda source, label: group_key(regex, source, manifest.classes[label]))
    return out


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
        "near_duplicates": near_duplicate_summary(decoded),
        "crossing": crossing_summary(manifest),
        "group_by": manifest.group_by,
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
    conflicting = report["duplicates"].get("train", {}).get("groups_with_conflicting_labels", 0)
    if conflicting:
        report["warnings"].append(f"{conflicting} groups of pixel-identical training images carry different labels: "
                                  "one image filed under two classes (data_report.md, exact duplicates)")
    for split, dup in report["duplicates"].items():
        if split != "train" and dup["with_copy_in_train"]:
            report["warnings"].append(f"{dup['with_copy_in_train']} of {dup['images']} {split} images have a "
                                      "pixel-identical copy in train")
    report["warnings"] += leak_warnings(report)
    unreadable = sum(len(v) for v in report["unreadable"].values())
    if unreadable:
        report["warnings"].append(f"{unreadable} unreadable files skipped")
    return report


def _examples(summary: dict) -> str:
    return "; ".join(f"{e['group']} ({', '.join(f'{s} {n}' for s, n in e['images'].items())})"
                     for e in summary["examples"][:3])


def leak_warnings(r: dict) -> list[str]:
    """Near-copies across splits, recordings cut by the split, groups that cross it."""
    out = []
    for split, near in r["near_duplicates"].items():
        if near["with_near_copy_in_train"]:
            a, b, _ = near["examples"][0]
            out.append(f"{near['with_near_copy_in_train']} of {near['images']} {split} images are near-copies of a "
                       f"training image (perceptual hash within {NEAR_BITS} of 256 bits), e.g. {a} ~ {b}")
    rec, groups = r["crossing"]["recordings"], r["crossing"].get("groups")
    if r["crossing"]["names_look_like_recordings"] and not r["group_by"] and rec["crossing"]:
        out.append(f"file names look like frames of recordings and no --group-by was given: {rec['crossing']} of "
                   f"{rec['groups']} recordings have frames in more than one split ({rec['images_in_crossing']} images; "
                   f"{_examples(rec)}); keep each person's images together with --group-by REGEX, e.g. '^(S\\d+)_' "
                   "for names like S010_004_00000017.png")
    if groups and groups["crossing"]:
        out.append(f"{groups['crossing']} of {groups['groups']} groups of --group-by {r['group_by']!r} have images in "
                   f"more than one split ({groups['images_in_crossing']} images; {_examples(groups)})")
    return out


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
    return "\n".join(lines + _leak_lines(r)) + "\n"


def _leak_lines(r: dict) -> list[str]:
    lines = ["", f"## Near-copies and groups across splits (perceptual hash within {NEAR_BITS} of 256 bits)", ""]
    for split, near in r.get("near_duplicates", {}).items():
        lines.append(f"- {split}: {near['with_near_copy_in_train']} of {near['images']} images are near-copies of a "
                     "training image" + "".join(f"\n  - {a} ~ {b} ({n} bits)" for a, b, n in near["examples"]))
    for name, what in (("recordings", "recordings (names differing only in a trailing number)"),
                       ("groups", f"groups of --group-by {r.get('group_by')!r}")):
        c = r.get("crossing", {}).get(name)
        if c:
            lines.append(f"- {what}: {c['crossing']} of {c['groups']} in more than one split, {c['images_in_crossing']} "
                         "images" + (f"; e.g. {_examples(c)}" if c["crossing"] else ""))
    return lines


def write_data_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "data_report.json", out_dir / "data_report.md"]
    atomic_write_text(paths[0], json.dumps(report, indent=2))
    atomic_write_text(paths[1], report_markdown(report))
    return paths
