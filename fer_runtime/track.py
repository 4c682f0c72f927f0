"""IoU tracking of face boxes with an exponential moving average of class probabilities per track."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: tuple[float, float, float, float]
    probs: np.ndarray | None = None
    raw_probs: np.ndarray | None = None
    missed: int = 0


class IouTracker:
    """Greedy IoU matching; ``smoothing`` is the EMA weight of the past (0 turns smoothing off)."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, smoothing: float = 0.7):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[tuple[float, float, float, float]]) -> list[Track]:
        """Match this frame's boxes; returns one track per box, in box order."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)), reverse=True)
        assigned: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for score, ti, bi in pairs:
            if score < self.iou_threshold:
                break
            if ti in used_tracks or bi in assigned:
                continue
            used_tracks.add(ti)
            assigned[bi] = self.tracks[ti]
        for ti, t in enumerate(self.tracks):
            if ti not in used_tracks:
                t.missed += 1
        for bi, box in enumerate(boxes):
            track = assigned.get(bi)
            if track is None:
                track = Track(self._next_id, box)
                self._next_id += 1
                self.tracks.append(track)
            track.box, track.missed = box, 0
            assigned[bi] = track
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return [assigned[bi] for bi in range(len(boxes))]

    def observe(self, track: Track, probs: np.ndarray) -> np.ndarray:
        """Fold one frame's probabilities into the track; returns the smoothed ones."""
        track.raw_probs = probs
        if track.probs is None or self.smoothing == 0.0:
            track.probs = probs.copy()
        else:
            track.probs = self.smoothing * track.probs + (1.0 - self.smoothing) * probs
        return track.probs
