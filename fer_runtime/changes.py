"""Where a new face may have come into a stream: what changed in the frame away from the faces already followed.

At full speed a background detection spans 20 frames or more and rests twice that before the next, so a face that steps
in waits up to 60 frames for one. Comparing the frame with an earlier one in 8x8-pixel cells costs a
few hundredths of a millisecond; only the regions that changed away from the followed faces (and the hair, shoulders
and body that move with them) are then searched, on the frame loop, which happens on the few frames where something
new came in (two_faces.mp4: 2 or 3 searches of 1 to 7 ms in 600 frames). Searches take at most a tenth of the time.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

CELL = 8  # frames are compared in cells this many pixels wide
LOOK_EVERY = 2  # frames between two comparisons: a new face is looked for at most a frame after it came in
FACE_SURROUND = 0.8  # box sides around a followed face (then and now) whose changes are that face's own movement
BODY_BELOW = 3.0  # and box sides below it: the shoulders and body that move with it
MIN_CELLS = 6  # fewer changed cells than this cannot hold a face worth a search
WHOLE_FRAME = 0.3  # regions larger than this share of the frame (the camera moved): left to full detection
REGION_PAD = 0.25  # a changed region is searched with this share of its size and 2 cells added on each side
SEARCH_SHARE = 0.1  # after a search, no look for 1 / SEARCH_SHARE - 1 times its length
# a search that finds nothing is made once more on the next look, before the rest: the cascade misses a face on one
# frame that it finds on the next, and the rest then cost it 20 to 30 frames (two_faces.mp4, 1 run in 4)
RETRIES = 1


class ChangeWatch:
    """``regions(gray, boxes)`` on every frame: the rectangles (x0, y0, x1, y1), frame pixels, that changed since the
    last comparison away from the followed faces' boxes, on every LOOK_EVERY-th frame; else an empty list. Call
    ``searched(seconds, found)`` after searching them."""

    def __init__(self, look_every: int = LOOK_EVERY) -> None:
        self.look_every = look_every
        self._frames = 0
        self._cells: np.ndarray | None = None  # the last compared frame in cells
        self._boxes: list[tuple] = []  # and its followed faces' boxes
        self._rest_until = 0.0  # time.perf_counter() before which there is no look
        self._compared: tuple[np.ndarray | None, list[tuple]] = (None, [])  # what the last look compared with
        self._retries = 0  # searches made again since the last rest
        self._spent = 0.0  # seconds searched since the last rest

    def searched(self, seconds: float, found: bool = True) -> None:
        """After the regions were searched for ``seconds``: a rest of 1 / SEARCH_SHARE - 1 times the time searched,
        or, when nothing was ``found``, up to RETRIES more searches of the same change first."""
        self._spent += seconds
        if not found and self._retries < RETRIES:
            self._retries += 1
            self._cells, self._boxes = self._compared  # the next look sees the same change again
            return
        self._rest()

    def _rest(self) -> None:
        self._rest_until = time.perf_counter() + self._spent * (1 / SEARCH_SHARE - 1)
        self._retries, self._spent = 0, 0.0

    def regions(self, gray: np.ndarray, boxes: list[tuple]) -> list[tuple[int, int, int, int]]:
        self._frames += 1
        if self._frames % self.look_every or time.perf_counter() < self._rest_until:
            return []
        found = self._changed(gray, boxes)
        if self._retries and not found:  # the change to search again has gone (or a detection found it meanwhile)
            self._rest()
        return found

    def _changed(self, gray: np.ndarray, boxes: list[tuple]) -> list[tuple[int, int, int, int]]:
        cells = _cells(gray)
        before, before_boxes = self._compared = self._cells, self._boxes
        self._cells, self._boxes = cells, list(boxes)
        if before is None or before.shape != cells.shape:
            return []
        diff = cv2.absdiff(cells, before)
        typical = float(np.partition(diff.ravel(), diff.size // 2)[diff.size // 2])  # the median: noise, or the light
        changed = (diff > 10 + 3 * typical).astype(np.uint8)
        for x, y, w, h in [*boxes, *before_boxes]:
            x0, y0 = int((x - FACE_SURROUND * w) / CELL), int((y - FACE_SURROUND * h) / CELL)
            x1, y1 = int((x + w * (1 + FACE_SURROUND)) / CELL) + 1, int((y + h * (1 + BODY_BELOW)) / CELL) + 1
            changed[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 0
        if changed.sum() < MIN_CELLS:
            return []
        count, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(changed, np.ones((3, 3), np.uint8)))
        cells_changed = np.bincount(labels[changed > 0], minlength=count)  # before the dilation joined them
        out, area = [], 0
        for label in range(1, count):
            x, y, w, h, _ = stats[label]
            if cells_changed[label] < MIN_CELLS or min(w, h) < 3:
                continue
            pad = 2 + max(w, h) * REGION_PAD
            x0, y0 = max(0, int((x - pad) * CELL)), max(0, int((y - pad) * CELL))
            x1, y1 = min(gray.shape[1], int((x + w + pad) * CELL)), min(gray.shape[0], int((y + h + pad) * CELL))
            out.append((x0, y0, x1, y1))
            area += (x1 - x0) * (y1 - y0)
        return out if area <= WHOLE_FRAME * gray.shape[0] * gray.shape[1] else []


def _cells(gray: np.ndarray) -> np.ndarray:
    """The frame's mean in CELL x CELL cells, halved step by step (OpenCV's fast path; one step of 8 is not)."""
    cells = gray
    for _ in range(CELL.bit_length() - 1):
        h, w = cells.shape[0] // 2, cells.shape[1] // 2
        if min(h, w) < 1:
            break
        cells = cv2.resize(cells[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    return cells
