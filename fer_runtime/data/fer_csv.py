"""The original Kaggle challenge files: ``fer2013.csv`` (or ``icml_face_data.csv``) and FER+'s ``fer2013new.csv``.

``fer2013.csv`` holds one face a row: ``emotion`` (a code), ``pixels`` (2,304 space-separated grey values of
a 48x48 image) and ``Usage`` (Training / PublicTest / PrivateTest). ``icml_face_data.csv`` spells the same
columns with a leading space. The codes are NOT the alphabetical folder order: ``EMOTION_CODES`` maps them.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np

from fer_runtime.errors import FerError

# The challenge's codes: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
EMOTION_CODES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CLASSES = tuple(sorted(EMOTION_CODES))  # the Kaggle image-folder names, alphabetical
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SIDE = 48


class CsvDataError(FerError, ValueError):
    """A CSV data file cannot be used as given."""


def _columns(header: list[str], path: Path, wanted: tuple[str, ...]) -> dict[str, int]:
    stripped = [h.strip() for h in header]
    missing = [w for w in wanted if w not in stripped]
    if missing:
        raise CsvDataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(stripped) or 'none'})")
    return {w: stripped.index(w) for w in wanted}


def read_rows(path: Path) -> list[list[str]]:
    """All rows of a CSV file, header first; one clear error for an unreadable or empty file."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CsvDataError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise CsvDataError(f"{path}: empty file")
    return rows


def read_fer2013(path: Path) -> list[tuple[str, int, int]]:
    """(split, class index in ``CLASSES``, data row) per face, validated; the pixels are read by ``pixels``."""
    rows = read_rows(path)
    col = _columns(rows[0], path, ("emotion", "pixels", "Usage"))
    out = []
    for row_no, row in enumerate(rows[1:], start=2):  # row numbers as a spreadsheet shows them
        where = f"{path} row {row_no}"
        if len(row) < len(rows[0]):
            raise CsvDataError(f"{where}: {len(row)} cells, the header has {len(rows[0])}")
        usage = row[col["Usage"]].strip()
        if usage not in USAGE_SPLIT:
            raise CsvDataError(f"{where}: unknown Usage {usage!r} (expected {', '.join(USAGE_SPLIT)})")
        code = row[col["emotion"]].strip()
        if not code.isdigit() or int(code) >= len(EMOTION_CODES):
            raise CsvDataError(f"{where}: emotion must be a code 0-{len(EMOTION_CODES) - 1}, got {code!r}")
        n = len(row[col["pixels"]].split())
        if n != SIDE * SIDE:
            raise CsvDataError(f"{where}: pixels has {n} values, a {SIDE}x{SIDE} face needs {SIDE * SIDE}")
        out.append((USAGE_SPLIT[usage], CLASSES.index(EMOTION_CODES[int(code)]), row_no - 2))
    if not out:
        raise CsvDataError(f"{path}: no data rows")
    return out


def read_ferplus_votes(path: Path, n_rows: int) -> list[tuple[str, str, list[str]]]:
    """(split, image name, ten vote cells) per row of ``fer2013new.csv``; its rows follow fer2013.csv's."""
    rows = read_rows(path)
    col = _columns(rows[0], path, ("Usage", "Image name"))
    first_vote = col["Image name"] + 1
    out = []
    for row_no, row in enumerate(rows[1:], start=2):
        usage = row[col["Usage"]].strip() if len(row) > col["Usage"] else ""
        if usage not in USAGE_SPLIT:
            raise CsvDataError(f"{path} row {row_no}: unknown Usage {usage!r} (expected {', '.join(USAGE_SPLIT)})")
        out.append((USAGE_SPLIT[usage], row[col["Image name"]].strip(), row[first_vote:]))
    if len(out) != n_rows:
        raise CsvDataError(f"{path} has {len(out)} rows and fer2013.csv beside it {n_rows}: they must match row for row")
    return out


@lru_cache(maxsize=2)
def _pixel_column(path: str, mtime_ns: int) -> tuple[str, ...]:
    rows = read_rows(Path(path))
    col = _columns(rows[0], Path(path), ("pixels",))["pixels"]
    return tuple(r[col] for r in rows[1:])


def pixels(path: Path, row: int) -> np.ndarray:
    """The 48x48 uint8 face of data row ``row`` (0-based)."""
    column = _pixel_column(str(path), path.stat().st_mtime_ns)
    values = np.array(column[row].split(), dtype=np.float64)
    if values.size != SIDE * SIDE or (values < 0).any() or (values > 255).any():
        raise CsvDataError(f"{path} row {row + 2}: pixels must be {SIDE * SIDE} values in 0..255")
    return values.astype(np.uint8).reshape(SIDE, SIDE)
