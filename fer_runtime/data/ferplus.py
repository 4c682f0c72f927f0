"""FER+ crowd labels (Barsoum et al. 2016): ten votes a face turned into a label or a distribution.

The rules are those of Microsoft's reference reader (``FERPlus/src/ferplus.py``, ``_process_data``), so a
figure from this code compares with the paper's. Votes come in the release's column order,
``VOTE_COLUMNS``; results are over this project's class names, ``CLASSES`` (alphabetical, the same words
as the FER2013 classes plus contempt).
"""

from __future__ import annotations

import numpy as np

from fer_runtime.errors import DataError

# Column order of fer2013new.csv and label.csv (after the image name / face box).
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
_NAME = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad", "anger": "angry",
         "disgust": "disgust", "fear": "fear", "contempt": "contempt"}
CLASSES = tuple(sorted(_NAME.values()))  # angry, contempt, disgust, fear, happy, neutral, sad, surprise
# column j of the 8 emotions -> index in CLASSES
_TO_CLASS = np.asarray([CLASSES.index(_NAME[c]) for c in VOTE_COLUMNS[:8]])
LABEL_MODES = ("majority", "probability", "crossentropy")
EMOTIONS = 8


def vote_target(votes: list[float] | np.ndarray, mode: str) -> np.ndarray | None:
    """Ten vote counts -> a distribution over ``CLASSES`` (one-hot for ``majority``), or None when excluded.

    ``probability`` and ``crossentropy`` share the distribution; ``probability`` samples from it per epoch.
    """
    if mode not in LABEL_MODES:
        raise DataError(f"unknown FER+ label mode {mode!r}: use one of {', '.join(LABEL_MODES)}")
    raw = np.asarray(votes, dtype=np.float64).copy()
    if raw.shape != (len(VOTE_COLUMNS),):
        raise ValueError(f"FER+ needs {len(VOTE_COLUMNS)} vote counts, got {raw.shape[0] if raw.ndim else 0}")
    raw[raw <= 1.0] = 0.0  # outlier removal: an emotion with a single vote is dropped
    total = raw.sum()
    emotion = np.zeros_like(raw)
    if mode == "majority":
        top = raw.max()
        if top > 0.5 * total:
            emotion[int(np.argmax(raw))] = top
    else:
        emotion = _top_emotions(raw, total)
    # the reference code marks a rejected face "unknown"; so do an unknown or NF winner: both are excluded
    if emotion.sum() == 0 or int(np.argmax(emotion)) >= EMOTIONS:
        return None
    dist = emotion[:EMOTIONS] / emotion[:EMOTIONS].sum()
    out = np.zeros(EMOTIONS)
    out[_TO_CLASS] = dist
    return out


def _top_emotions(raw: np.ndarray, total: float) -> np.ndarray:
    """The fewest top emotions (ties taken together) that cover 75% of the votes, at most 3; zeros if rejected."""
    raw = raw.copy()
    emotion = np.zeros_like(raw)
    covered, count, valid = 0.0, 0, True
    while covered < 0.75 * total and count < 3 and valid:
        top = raw.max()
        for i in range(len(raw)):
            if raw[i] != top:
                continue
            emotion[i], raw[i] = top, 0.0
            covered += top
            count += 1
            if i >= EMOTIONS:  # unknown or NF ties with the top emotions: stop there
                valid = False
                if emotion.sum() > top:  # other emotions came first: they stand, this one does not
                    emotion[i] = 0.0
                    count -= 1
                break
    if emotion.sum() <= 0.5 * total or count > 3:
        return np.zeros_like(raw)
    return emotion


def parse_votes(cells: list[str], where: str) -> np.ndarray:
    """Ten vote cells -> floats; a clear error naming ``where`` (file and row) otherwise."""
    if len(cells) != len(VOTE_COLUMNS):
        raise ValueError(f"{where}: expected {len(VOTE_COLUMNS)} vote columns, got {len(cells)}")
    try:
        votes = np.asarray([float(c) for c in cells])
    except ValueError:
        raise ValueError(f"{where}: votes are not numbers: {', '.join(cells)}") from None
    if not np.isfinite(votes).all() or (votes < 0).any():
        raise ValueError(f"{where}: votes must be non-negative counts: {', '.join(cells)}")
    return votes
