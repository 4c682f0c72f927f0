"""Follow a face between detections: template matching in a small window around its last box.

Full-frame detection costs 5-25 ms on a small CPU; matching a 32-pixel face template inside a window
around the last box costs a fraction of a millisecond. So detection runs every few frames (or as soon as
a face is lost) and every frame in between moves each box to where its face went.
"""

from __future__ import annotations

import cv2
import numpy as np

TEMPLATE_SIDE = 32  # faces are matched at this width, whatever their size in the frame


class FaceFollower:
    """One face's template from its last detection; ``follow`` finds it again in a later frame."""

    def __init__(self, gray: np.ndarray, box: tuple[float, float, float, float], search: float = 0.6,
                 min_score: float = 0.55):  # fmt: skip
        x, y, w, h = box
        self.scale = TEMPLATE_SIDE / max(w, 1.0)
        self.box, self.search, self.min_score = box, search, min_score
        self.template = self._patch(gray, box)
        self.score = 1.0

    def _patch(self, gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        x, y, w, h = (int(round(v)) for v in box)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(gray.shape[1], x + w), min(gray.shape[0], y + h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return None
        return cv2.resize(gray[y0:y1, x0:x1], None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)

    def follow(self, gray: np.ndarray) -> tuple[float, float, float, float] | None:
        """The face's box in this frame, or None when it is no longer found (detect again)."""
        if self.template is None:
            return None
        x, y, w, h = self.box
        pad_x, pad_y = w * self.search, h * self.search
        wx0, wy0 = max(0, int(x - pad_x)), max(0, int(y - pad_y))
        wx1, wy1 = min(gray.shape[1], int(x + w + pad_x)), min(gray.shape[0], int(y + h + pad_y))
        window = gray[wy0:wy1, wx0:wx1]
        if window.size == 0:
            return None
        small = cv2.resize(window, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        th, tw = self.template.shape
        if small.shape[0] < th or small.shape[1] < tw:
            return None
        result = cv2.matchTemplate(small, self.template, cv2.TM_CCOEFF_NORMED)
        _, self.score, _, (mx, my) = cv2.minMaxLoc(result)
        if self.score < self.min_score:
            return None
        self.box = (wx0 + mx / self.scale, wy0 + my / self.scale, w, h)
        return self.box
