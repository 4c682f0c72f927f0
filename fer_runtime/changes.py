"""Where a new face may have come into a stream: what changed in the frame away from the faces already followed.

At full speed a background detection spans 30 frames or more, so a face that steps in waits that long, and up to
twice that when a detection was already running. Comparing the frame with an earlier one in 8x8-pixel cells costs a
few hundredths of a millisecond; only the regions that changed away from the followed faces (and their own hair,
shoulders and movement around them) are then searched, on the frame loop, which happens on the few frames where
something new came in (two_faces.mp4: 2 to 12 searches of 1 to 5 ms in 600 frames).
"""

from __future__ import annotations

import cv2
import numpy as np

CELL = 8  # frames are compared in cells this many pixels wide
LOOK_EVERY = 2  # frames between two comparisons: a new face is looked for at most a frame after it came in
FACE_SURROUND = 0.8  # box sides around a followed face (then and now) whose changes are that face's own movement
MIN_CELLS = 6  # fewer changed cells than this cannot hold a face worth a search
WHOLE_FRAME = 0.3  # a larger share of the frame changed (a light, the camera moved): left to full detection
REGION_PAD = 0.5  # a changed region is searched with this share of its size added on each side


class ChangeWatch:
    """``regions(gray, boxes)`` on every frame: the rectangles (x0, y0, x1, y1), frame pixels, that changed since the
    last comparison away from the followed faces' boxes, on every LOOK_EVERY-th frame; else an empty list."""

    def __init__(self, look_every: int = LOOK_EVERY) -> None:
        self.look_every = look_every
        self._frames = 0
        self._cells: np.ndarray | None = None  # the last compared frame in cells
        self._boxes: list[tuple] = []  # and its followed faces' boxes

    def regions(self, gray: np.ndarray, boxes: list[tuple]) -> list[tuple[int, int, int, int]]:
        self._frames += 1
        if self._frames % self.look_every:
            return []
        cells = _cells(gray)
        before, before_boxes = self._cells, self._boxes
        self._cells, self._boxes = cells, list(boxes)
        if before is None or before.shape != cells.shape:
            return []
        diff = cv2.absdiff(cells, before)
        changed = (diff > 10 + 3 * cv2.mean(diff)[0]).astype(np.uint8)  # above the sensor noise, whatever its level
        for x, y, w, h in [*boxes, *before_boxes]:
            x0, y0 = int((x - FACE_SURROUND * w) / CELL), int((y - FACE_SURROUND * h) / CELL)
            x1, y1 = int((x + w * (1 + FACE_SURROUND)) / CELL) + 1, int((y + h * (1 + FACE_SURROUND)) / CELL) + 1
            changed[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 0
        if changed.sum() < MIN_CELLS or changed.mean() > WHOLE_FRAME:
            return []
        _, _, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(changed, np.ones((3, 3), np.uint8)))
        out = []
        for x, y, w, h, area in stats[1:]:
            if area < MIN_CELLS or min(w, h) < 3:
                continue
            pad = max(w, h) * REGION_PAD
            out.append((max(0, int((x - pad) * CELL)), max(0, int((y - pad) * CELL)),
                        min(gray.shape[1], int((x + w + pad) * CELL)), min(gray.shape[0], int((y + h + pad) * CELL))))
        return out


def _cells(gray: np.ndarray) -> np.ndarray:
    """The frame's mean in CELL x CELL cells, halved step by step (OpenCV's fast path; one step of 8 is not)."""
    cells = gray
    side = 1
    while side < CELL and min(cells.shape[:2]) >= 2:
        h, w = cells.shape[0] // 2, cells.shape[1] // 2
        cells = cv2.resize(cells[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
        side *= 2
    return cells
