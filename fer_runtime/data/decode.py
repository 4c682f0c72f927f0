"""Decoding a split for a model (colour mode, size) and the decode cache that makes the second time instant."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_runtime.contract import to_model_layout
from fer_runtime.data import fer_csv
from fer_runtime.data.images import image_format, read_image
from fer_runtime.data.splits import CSV_ROW, SplitManifest
from fer_runtime.errors import DataError
from fer_runtime.outputs import atomic_write_npz, atomic_write_text

log = logging.getLogger(__name__)


def read_source(root: Path, source: str) -> np.ndarray | None:
    """A manifest item's image: a file, or a CSV data row."""
    if CSV_ROW in source:
        name, row = source.rsplit(CSV_ROW, 1)
        return fer_csv.pixels(root / name, int(row))
    return read_image(root / source)


@dataclass
class DecodedSplit:
    images: np.ndarray  # uint8, N x C x H x W, model colour order and size
    labels: np.ndarray  # int64, N
    paths: list[str]
    skipped: list[tuple[str, str]]  # (source, reason)
    targets: np.ndarray | None = None  # float32 N x K vote distributions (FER+ probability / crossentropy)
    formats: dict[str, int] = field(default_factory=dict)  # original 'WxH mode' -> count


def default_cache_dir() -> Path:
    return Path(os.environ.get("FER_CACHE_DIR", Path.home() / ".cache" / "fer-toolchain"))


def _cache_key(root: Path, items: list[tuple[str, int]], channels: int, height: int, width: int) -> str:
    h = hashlib.sha1(f"v3|{channels}|{height}|{width}|{root}".encode())  # v3: JPEGs upright by EXIF
    stats: dict[str, str] = {}
    for rel, label in items:
        file = rel.split(CSV_ROW, 1)[0]
        if file not in stats:
            st = (root / file).stat()
            stats[file] = f"{st.st_size}|{st.st_mtime_ns}"
        h.update(f"{rel}|{label}|{stats[file]}\n".encode())
    return h.hexdigest()[:20]


def load_split(
    manifest: SplitManifest,
    split: str,
    channels: int,
    input_size: tuple[int, int],
    root: str | Path | None = None,
    cache_dir: Path | None = None,
    strict: bool = False,
    progress: Callable[[Iterable, int, str], Iterator] | None = None,
) -> DecodedSplit:
    """Decode a split once into a uint8 array cached on disk; later calls read the cache."""
    if split not in manifest.splits:
        raise DataError(f"split '{split}' not in this data (has {', '.join(manifest.splits)})")
    root = Path(root or manifest.root)
    if root.is_file():
        root = root.parent
    items = manifest.splits[split]
    missing = sorted(f for f in {rel.split(CSV_ROW, 1)[0] for rel, _ in items} if not (root / f).exists())
    if missing:
        raise DataError(f"{len(missing)} files of split '{split}' are missing under {root}, e.g. {missing[0]}")
    height, width = input_size
    targets = np.asarray(manifest.targets[split], np.float32) if split in manifest.targets else None
    cache_file = Path(cache_dir or default_cache_dir()) / f"{split}-{_cache_key(root, items, channels, height, width)}.npz"
    cached = _read_cache(cache_file, items, targets)
    if cached is None:
        cached = _decode(root, items, split, (channels, height, width), strict, progress, targets)
        _write_cache(cache_file, cached, items)
    if cached.skipped and strict:
        raise DataError(f"{len(cached.skipped)} unreadable images in split '{split}', e.g. {cached.skipped[0][0]}")
    if cached.skipped:
        warnings.warn(f"skipped {len(cached.skipped)} unreadable images in split '{split}', e.g. "
                      f"{cached.skipped[0][0]}", stacklevel=2)  # fer-train lists them all in its run's skipped_files.txt
    return cached


def _decode(root, items, split, shape: tuple[int, int, int], strict, progress, targets) -> DecodedSplit:
    """Every item read and brought to ``shape`` (channels, height, width); unreadable ones skipped (or, strict, an error)."""
    images = np.empty((len(items), *shape), dtype=np.uint8)
    keep = np.zeros(len(items), dtype=bool)
    skipped: list[tuple[str, str]] = []
    formats: Counter = Counter()
    iterator = progress(items, len(items), f"decoding {split}") if progress else items
    for i, (rel, _) in enumerate(iterator):
        try:
            img = read_source(root, rel)
        except (fer_csv.CsvDataError, ValueError, OSError) as exc:
            img, reason = None, str(exc)
        else:
            reason = "not an image OpenCV can decode"
        if img is None:
            if strict:
                raise DataError(f"unreadable image {root / rel} ({reason}); drop --strict to skip such files")
            skipped.append((rel, reason))
            continue
        formats[image_format(img)] += 1
        images[i] = to_model_layout(img, *shape)
        keep[i] = True
    if not keep.any():
        raise DataError(f"split '{split}' has no readable images")
    return DecodedSplit(images[keep], np.asarray([y for _, y in items], np.int64)[keep],
                        [rel for (rel, _), k in zip(items, keep) if k], skipped,
                        None if targets is None else targets[keep], dict(formats))


def _read_cache(cache_file: Path, items, targets) -> DecodedSplit | None:
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            images, labels, keep = z["images"], z["labels"], z["keep"]
            skipped = [tuple(s) for s in json.loads(str(z["skipped"]))]
            formats = json.loads(str(z["formats"]))
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable cache %s: %s", cache_file, exc)
        return None
    return DecodedSplit(images, labels, [rel for (rel, _), k in zip(items, keep) if k], skipped,
                        None if targets is None else targets[keep], formats)


def _write_cache(cache_file: Path, decoded: DecodedSplit, items) -> None:
    kept = set(decoded.paths)
    keep = np.asarray([rel in kept for rel, _ in items])
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npz(cache_file, images=decoded.images, labels=decoded.labels, keep=keep,
                         skipped=json.dumps(decoded.skipped), formats=json.dumps(decoded.formats))
    except OSError as exc:
        log.warning("could not write decode cache %s: %s", cache_file, exc)


def write_skipped_log(path: Path, decoded: dict[str, DecodedSplit]) -> int:
    lines = [f"{split}\t{rel}\t{reason}" for split, d in decoded.items() for rel, reason in d.skipped]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
