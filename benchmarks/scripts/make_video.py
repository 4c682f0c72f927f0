"""Build a 640x480 test video of a real face (scikit-image's astronaut) moving and scaling across the frame.

python benchmarks/scripts/make_video.py OUT.mp4 [FRAMES] [FACES]   (make bench: moving_face.mp4, two_faces.mp4)
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def astronaut_bgr() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("needs scikit-image: pip install scikit-image") from None
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _bounce(t: int, span: int) -> int:
    """0, 1, ..., span, span - 1, ..., 0, 1, ...: a position that turns at both ends instead of jumping back."""
    t %= 2 * span
    return t if t <= span else 2 * span - t


def write_moving_face_video(path: str | Path, frames: int = 300, fps: int = 30, noise: float = 6.0, seed: int = 0,
                            faces: int = 1) -> Path:
    """One face moving 8 px a frame from side to side, bobbing and growing and shrinking 4 px a frame; with
    ``faces=2`` a smaller, mirrored one comes in below it for the middle half of the clip, moving the other way.

    (Before issue 48 the position was taken modulo a width that changed with the face's size, so from frame 51 on
    the face jumped across the frame every few frames, faster than any camera sees a face move.)"""
    face = astronaut_bgr()[30:230, 130:330]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    rng = np.random.default_rng(seed)
    for i in range(frames):
        size = (150 if faces == 1 else 120) + _bounce(i, 11) * 4
        canvas = np.full((480, 640, 3), 90, np.uint8)
        x = 40 + _bounce(i * 8, 640 - 194 - 80)
        y = (100 if faces == 1 else 40) + int(30 * np.sin(i / 6))
        canvas[y : y + size, x : x + size] = cv2.resize(face, (size, size))
        if faces == 2 and frames // 4 <= i < 3 * frames // 4:
            side = 110
            x2 = 640 - side - 20 - _bounce(i * 5, 640 - side - 40)
            canvas[330 : 330 + side, x2 : x2 + side] = cv2.resize(cv2.flip(face, 1), (side, side))
        writer.write(np.clip(canvas + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8))
    writer.release()
    return Path(path)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "moving_face.mp4"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    print(write_moving_face_video(out, n, faces=int(sys.argv[3]) if len(sys.argv) > 3 else 1))
