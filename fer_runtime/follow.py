"""Follow a face between detections: template matching in a small window around its last box.

Full-frame detection costs 5-25 ms on a small CPU; matching a 32-pixel face template inside a window
around the last box costs a fraction of a millisecond. So detection runs every few frames (or as soon as
a face is lost) and every frame in between moves each box to where its face went.
"""

from __future__ import annotations

import cv2
import numpy as np

TEMPLATE_SIDE = 32  # faces are matched at this width, whatever their size in the frame
# a weaker match than this also tries the face a little larger and smaller: at 0.8 the box kept its size through a
# face growing or shrinking (fer-bench --pipeline at full speed, IoU with every-frame detection: two_faces.mp4
# 0.867 -> 0.89, moving_face.mp4 0.90 -> 0.925 at 0.95; at the clips' 30 FPS 0.89 and 0.91 either way)
RESCALE_BELOW = 0.95
FAR_BELOW = 0.8  # a weaker match near the last box than this: the face is looked for in the whole window
RESCALE_FACTORS = (0.9, 1.1)
# the face is looked for this close to its last box first (box sides per side), and in the whole ``search`` window
# only when the match there is weak: faces move little from frame to frame, and matching in the small window costs a
# fifth (two_faces.mp4: following two faces 0.66 -> 0.35 ms a frame, the same IoU with every-frame detection)
NEAR_SEARCH = 0.3
SURROUND = 3  # template pixels of the frame around a face shrunk with it: pyrDown's 5 taps and the bilinear rest


class FaceFollower:
    """One face's template from its last detection; ``follow`` finds it again in a later frame."""

    def __init__(self, gray: np.ndarray, box: tuple[float, float, float, float], search: float = 0.8,
                 min_score: float = 0.55):
        x, y, w, h = box
        self.scale = TEMPLATE_SIDE / max(w, 1.0)
        self.box, self.search, self.min_score = box, search, min_score
        self.origin = (0.0, 0.0)  # where the template's pixel grid starts from the box's corner, frame pixels (_patch)
        self.template = self._patch(gray, box)
        self.score = 1.0
        self.missed_detections = 0  # full detections in a row that did not find this face while it was followed

    def _patch(self, gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        """The face's pixels at the template's scale, those inside the frame: shrunk with their surroundings (else
        pyrDown's reflected border pulls a large face's match down and right, 1 px at 300 px) and cut out after;
        ``origin`` keeps where the template's grid starts from the box's corner (a fraction of a pixel, the part of a
        face beyond the frame's edge)."""
        x, y, w, h = (int(round(v)) for v in box)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(gray.shape[1], x + w), min(gray.shape[0], y + h)
        if min(x1 - x0, y1 - y0) * self.scale < 4:  # under 4 template pixels: nothing to match
            return None
        pad = int(np.ceil(SURROUND / self.scale))
        px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
        small, lead = shrink(gray[py0:min(gray.shape[0], y1 + pad), px0:min(gray.shape[1], x1 + pad)], self.scale)
        jx, jy = int(round((x0 - px0) * self.scale)), int(round((y0 - py0) * self.scale))
        tw, th = int(round((x1 - x0) * self.scale)), int(round((y1 - y0) * self.scale))
        self.origin = (px0 + jx / self.scale - lead - box[0], py0 + jy / self.scale - lead - box[1])
        return small[jy:jy + th, jx:jx + tw]

    def follow(self, gray: np.ndarray) -> tuple[float, float, float, float] | None:
        """The face's box in this frame, or None when it is no longer found (detect again).

        Matched at the template's scale near the last box first, and in the whole ``search`` window when that match is
        weak; when the best is not close, the face may have grown or shrunk, so the neighbouring scales are tried too
        (in the window it was found in) and the box takes the size of the best one.
        """
        if self.template is None:
            return None
        reach = min(NEAR_SEARCH, self.search)
        best = self._match(gray, 1.0, reach)
        if best[0] < FAR_BELOW and self.search > reach:
            reach = self.search
            best = max(best, self._match(gray, 1.0, reach), key=lambda m: m[0])
        if best[0] < RESCALE_BELOW:
            best = max([best, *(self._match(gray, f, reach) for f in RESCALE_FACTORS)], key=lambda m: m[0])
        self.score, box = best
        if box is None or self.score < self.min_score:
            return None
        self.box = box
        return box

    def _match(self, gray: np.ndarray, factor: float, search: float) -> tuple[float, tuple[float, float, float, float] | None]:
        """(score, box) of the template in a window ``search`` face widths per side around the last box, the face
        taken ``factor`` times its size."""
        x, y, w, h = self.box
        w, h = w * factor, h * factor
        cx, cy = x + self.box[2] / 2, y + self.box[3] / 2
        pad_x, pad_y = w * search, h * search
        wx0, wy0 = max(0, int(cx - w / 2 - pad_x)), max(0, int(cy - h / 2 - pad_y))
        wx1, wy1 = min(gray.shape[1], int(cx + w / 2 + pad_x)), min(gray.shape[0], int(cy + h / 2 + pad_y))
        window = gray[wy0:wy1, wx0:wx1]
        scale = TEMPLATE_SIDE / max(w, 1.0)
        th, tw = self.template.shape
        if window.size == 0 or window.shape[0] * scale < th or window.shape[1] * scale < tw:
            return 0.0, None
        small, lead = shrink(window, scale)
        if small.shape[0] < th or small.shape[1] < tw:
            return 0.0, None
        result = cv2.matchTemplate(small, self.template, cv2.TM_CCOEFF_NORMED)
        _, score, _, (mx, my) = cv2.minMaxLoc(result)
        fx, fy = peak_offset(result, mx, my)
        # where the template's grid landed, less where it starts in the face, the face as wide now as it is matched
        grown = self.scale / scale  # (the box's width may have changed since the template was cut)
        ox, oy = self.origin
        return float(score), (wx0 + (mx + fx) / scale - lead - ox * grown, wy0 + (my + fy) / scale - lead - oy * grown,
                              w, h)


def shrink(image: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``image`` at ``scale``: halved by pyrDown's Gaussian while the scale left is under a half, the rest bilinear, as
    smooth as an area average for a third of its cost or less (the window of a 67 / 150 px face: 31 -> 12 us, 121 -> 29
    us); and ``lead``: the result's pixel j is centred on the image's (j + 0.5) / scale - lead (pixel centres at whole
    numbers), as pyrDown centres its pixel i on 2i where an area average centres it on 2i + 0.5."""
    levels = 0
    while scale * 2**levels < 0.5 and min(image.shape[:2]) >= 2:
        image = cv2.pyrDown(image)
        levels += 1
    rest = scale * 2**levels
    return cv2.resize(image, None, fx=rest, fy=rest, interpolation=cv2.INTER_LINEAR), 2.0 ** (levels - 1)


def peak_offset(result: np.ndarray, mx: int, my: int) -> tuple[float, float]:
    """Where the match peaks between cells, from its best cell (mx, my): the vertex of a parabola through that cell and
    its two neighbours, in x and in y, within half a cell. A template pixel is a face width / TEMPLATE_SIDE of frame
    pixels (3 at 100 px, 7 at 220 px), the step a box moved in before."""
    rows, cols = result.shape
    fx = _vertex(*result[my, mx - 1:mx + 2]) if 0 < mx < cols - 1 else 0.0
    fy = _vertex(*result[my - 1:my + 2, mx]) if 0 < my < rows - 1 else 0.0
    return fx, fy


def _vertex(before: float, peak: float, after: float) -> float:
    curve = before - 2.0 * peak + after
    return max(-0.5, min(0.5, 0.5 * float(before - after) / float(curve))) if curve < 0 else 0.0
