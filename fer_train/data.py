"""Image-folder discovery, seeded stratified splits, and a decoded uint8 cache.

Supported layouts under a data root:
  1. root/train/<class>/, root/val/<class>/ [, root/test/<class>/]
  2. root/train/<class>/, root/test/<class>/   (val carved from train, or test doubles as val)
  3. root/<class>/                              (val/test carved with stratified splits)
and the FER2013 protocol (``--protocol fer2013``): root/train + root/test, where
``PublicTest_*`` files are validation and ``PrivateTest_*`` files the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_runtime.contract import resize_for_model

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The data root cannot be used as given."""


@dataclass
class SplitManifest:
    """Which files make up each split; saved with every run and reused by evaluation."""

    root: str
    classes: list[str]
    layout: str
    splits: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, label)]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "layout": self.layout,
            "notes": self.notes,
            "splits": {k: [[p, int(y)] for p, y in v] for k, v in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitManifest:
        return cls(
            root=data["root"],
            classes=list(data["classes"]),
            layout=data["layout"],
            notes=list(data.get("notes", [])),
            splits={k: [(str(p), int(y)) for p, y in v] for k, v in data["splits"].items()},
        )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()))

    def counts(self) -> dict[str, list[int]]:
        out = {}
        for name, items in self.splits.items():
            c = np.bincount([y for _, y in items], minlength=len(self.classes))
            out[name] = c.tolist()
        return out


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_class_folders(folder: Path, root: Path) -> dict[str, list[str]]:
    """class name -> sorted image paths relative to root. Errors on no classes or an empty class."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    found = {}
    for d in dirs:
        files = sorted(str(p.relative_to(root)) for p in d.rglob("*") if _is_image(p))
        if not files:
            raise DataError(f"class folder {d} has no images")
        found[d.name] = files
    return found


def _check_same_classes(per_split: dict[str, dict[str, list[str]]]) -> list[str]:
    names = {split: sorted(found) for split, found in per_split.items()}
    reference_split, reference = next(iter(names.items()))
    for split, classes in names.items():
        if classes != reference:
            only_a = sorted(set(reference) - set(classes))
            only_b = sorted(set(classes) - set(reference))
            raise DataError(
                f"class folders differ between '{reference_split}' and '{split}': "
                f"only in {reference_split}: {only_a or '-'}; only in {split}: {only_b or '-'}"
            )
    return reference


def _labelled(found: dict[str, list[str]], classes: list[str]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    return [(p, index[c]) for c in classes for p in found[c]]


def stratified_split(
    items: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split off ``fraction`` of every class (seeded). Returns (rest, carved)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"split fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(items), []
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in sorted(items):
        by_class.setdefault(item[1], []).append(item)
    rest, carved = [], []
    for label in sorted(by_class):
        group = by_class[label]
        order = rng.permutation(len(group))
        n_carved = int(round(fraction * len(group)))
        if len(group) >= 2:
            n_carved = min(max(n_carved, 1), len(group) - 1)
        else:
            n_carved = 0
        carved += [group[i] for i in order[:n_carved]]
        rest += [group[i] for i in order[n_carved:]]
    return sorted(rest, key=_sort_key), sorted(carved, key=_sort_key)


def _sort_key(item: tuple[str, int]) -> tuple[int, str]:
    return item[1], item[0]


def discover(
    root: str | Path,
    protocol: str | None = None,
    val_split: float | None = None,
    test_split: float | None = None,
    seed: int = 0,
) -> SplitManifest:
    """Find classes and build train/val/test splits for any supported layout."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data root not found: {root}")
    if not root.is_dir():
        raise DataError(f"data root is not a folder: {root}")
    for name, frac in (("--val-split", val_split), ("--test-split", test_split)):
        if frac is not None and not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    notes: list[str] = []
    has = {s: (root / s).is_dir() for s in SPLITS}

    if protocol == "fer2013":
        if not (has["train"] and has["test"]):
            raise DataError(f"--protocol fer2013 needs {root}/train and {root}/test (Kaggle layout)")
        found = {s: scan_class_folders(root / s, root) for s in ("train", "test")}
        classes = _check_same_classes(found)
        test_items = _labelled(found["test"], classes)
        public = [it for it in test_items if Path(it[0]).name.startswith("PublicTest_")]
        private = [it for it in test_items if Path(it[0]).name.startswith("PrivateTest_")]
        if not public or not private:
            raise DataError(f"--protocol fer2013: no PublicTest_*/PrivateTest_* files in {root}/test")
        splits = {"train": _labelled(found["train"], classes), "val": public, "test": private}
        layout = "fer2013"
        notes.append("FER2013 protocol: train=Training_*, val=PublicTest_*, test=PrivateTest_*")
    elif protocol not in (None, "", "folders"):
        raise DataError(f"unknown protocol {protocol!r}: use 'fer2013' or leave it out")
    elif has["train"]:
        present = [s for s in SPLITS if has[s]]
        found = {s: scan_class_folders(root / s, root) for s in present}
        classes = _check_same_classes(found)
        splits = {s: _labelled(found[s], classes) for s in present}
        if has["val"]:
            layout = "train-val-test" if has["test"] else "train-val"
            if val_split:
                notes.append("--val-split ignored: the data root has its own val/ folder")
        elif val_split:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_split, seed)
            layout = "train-test" if has["test"] else "train-only"
            notes.append(f"val carved from train: stratified {val_split:.3f}, seed {seed}")
        elif has["test"]:
            splits["val"] = splits["test"]
            layout = "train-test"
            msg = (
                "no val/ folder and no --val-split: the test set doubles as validation, "
                "so test figures are not independent of model selection"
            )
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
        else:
            raise DataError(f"{root}/train has no val/ or test/ beside it: pass --val-split F")
        if test_split:
            notes.append("--test-split ignored: the layout has folders per split")
    else:
        found = scan_class_folders(root, root)
        classes = sorted(found)
        items = _labelled(found, classes)
        test_frac = 0.0 if test_split is None else test_split
        val_frac = 0.1 if val_split is None else val_split
        if test_frac + val_frac >= 1.0:
            raise DataError("--val-split plus --test-split must be below 1")
        rest, test = stratified_split(items, test_frac, seed)
        # val fraction is of the whole set, so rescale for what remains
        train, val = stratified_split(rest, val_frac / (1.0 - test_frac), seed + 1)
        splits = {"train": train, "val": val}
        if test:
            splits["test"] = test
        layout = "class-folders"
        notes.append(f"stratified splits from class folders: val {val_frac}, test {test_frac}, seed {seed}")
        if not val:
            raise DataError("the validation split is empty: raise --val-split")
    for name, items in splits.items():
        if not items:
            raise DataError(f"split '{name}' is empty")
    return SplitManifest(root=str(root.resolve()), classes=classes, layout=layout, splits=splits, notes=notes)


# --------------------------------------------------------------------------- decoding


def decode_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """Any image mode (gray, RGB, RGBA, palette, 16-bit) -> uint8 HxWxC in the model's colour mode."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img.convert("RGBA"))
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    arr = resize_for_model(arr, height, width)
    return arr.reshape(height, width, channels)


@dataclass
class DecodedSplit:
    images: np.ndarray  # uint8, N x C x H x W
    labels: np.ndarray  # int64, N
    paths: list[str]
    skipped: list[tuple[str, str]]  # (path, reason)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FER_CACHE_DIR", Path.home() / ".cache" / "fer-toolchain"))


def _cache_key(root: Path, items: list[tuple[str, int]], channels: int, height: int, width: int) -> str:
    h = hashlib.sha1(f"v1|{channels}|{height}|{width}|{root}".encode())
    for rel, label in items:
        st = (root / rel).stat()
        h.update(f"{rel}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_split(
    manifest: SplitManifest,
    split: str,
    channels: int,
    input_size: tuple[int, int],
    root: str | Path | None = None,
    cache_dir: Path | None = None,
    strict: bool = False,
    progress: bool = True,
) -> DecodedSplit:
    """Decode a split once into a uint8 array cached on disk; later calls memory-map the cache."""
    if split not in manifest.splits:
        raise DataError(f"split '{split}' not in this data ({', '.join(manifest.splits)})")
    root = Path(root or manifest.root)
    items = manifest.splits[split]
    missing = [rel for rel, _ in items if not (root / rel).exists()]
    if missing:
        raise DataError(f"{len(missing)} files of split '{split}' are missing under {root}, e.g. {missing[0]}")
    height, width = input_size
    cache_dir = Path(cache_dir or default_cache_dir())
    key = _cache_key(root, items, channels, height, width)
    cache_file = cache_dir / f"{split}-{key}.npz"
    if cache_file.exists():
        cached = None
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                images, labels, keep = z["images"], z["labels"], z["keep"]
                skipped = [tuple(s) for s in json.loads(str(z["skipped"]))]
            cached = DecodedSplit(images, labels, [rel for (rel, _), k in zip(items, keep) if k], skipped)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s: %s", cache_file, exc)
        if cached is not None:
            _report_skipped(cached.skipped, split, strict)
            return cached
    images = np.empty((len(items), channels, height, width), dtype=np.uint8)
    keep = np.zeros(len(items), dtype=bool)
    skipped: list[tuple[str, str]] = []
    iterator = items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(items, desc=f"decoding {split}", unit="img", leave=False, mininterval=1.0)
    for i, (rel, _) in enumerate(iterator):
        try:
            images[i] = decode_image(root / rel, channels, height, width).transpose(2, 0, 1)
            keep[i] = True
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if strict:
                raise DataError(f"unreadable image {root / rel} ({reason}); drop --strict to skip such files") from None
            skipped.append((rel, reason))
    labels = np.asarray([y for _, y in items], dtype=np.int64)[keep]
    images = images[keep]
    paths = [rel for (rel, _), k in zip(items, keep) if k]
    if len(images) == 0:
        raise DataError(f"split '{split}' has no readable images")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, labels=labels, keep=keep, skipped=json.dumps(skipped))
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.warning("could not write decode cache %s: %s", cache_file, exc)
    _report_skipped(skipped, split, strict)
    return DecodedSplit(images, labels, paths, skipped)


def _report_skipped(skipped: list, split: str, strict: bool) -> None:
    if skipped and strict:
        raise DataError(f"{len(skipped)} unreadable images in split '{split}', e.g. {skipped[0][0]}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable images in split '{split}' (listed in skipped_files.txt)", stacklevel=3)


def write_skipped_log(path: Path, decoded: dict[str, DecodedSplit]) -> int:
    lines = [f"{split}\t{rel}\t{reason}" for split, d in decoded.items() for rel, reason in d.skipped]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
