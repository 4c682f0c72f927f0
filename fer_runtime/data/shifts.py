"""Everyday camera shifts of a face crop: one definition for the shift report (fer-bench) and for training.

Each family changes an 8-bit crop as a camera, a codec or a detector would: framing, exposure, blur, JPEG, sensor
noise, rotation, a small face scaled up, and the colour-to-grey path of a colour camera. A family has three named
severities (mild, moderate, harsh) at 48 px; the moderate one is what the robustness targets are read on. Training
draws the same functions with a random strength up to the harsh level (``fer_train.augment``).

Every function takes an image (H x W grey or H x W x 3 BGR, uint8), a strength and a numpy ``Generator`` and returns an
image of the same size, grey unless the family is the colour path (BGR, turned grey by the model's own
``to_model_layout`` as the runtime does). The report seeds one generator per image, shift and severity, so a row is
the same on every run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Image = np.ndarray
REFERENCE_SIDE = 48  # the severities are stated for a 48 px face; other sizes scale the pixel-sized ones


def _side_scale(img: Image) -> float:
    return min(img.shape[:2]) / REFERENCE_SIDE


def _warp(img: Image, matrix: np.ndarray) -> Image:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def zoom(img: Image, factor: float, dx: float = 0.0, dy: float = 0.0) -> Image:
    """The crop a box ``factor`` times the side would give (above 1: more context, below: tighter), its centre moved
    by (dx, dy) sides. Context beyond the image edge repeats the edge pixels: these crops have nothing beyond it."""
    h, w = img.shape[:2]
    s, cx, cy = 1.0 / factor, (w - 1) / 2, (h - 1) / 2  # pixel centres
    matrix = np.array([[s, 0, (1 - s) * cx - dx * w * s], [0, s, (1 - s) * cy - dy * h * s]], np.float64)
    return _warp(img, matrix)


def more_context(img: Image, amount: float, rng: np.random.Generator) -> Image:
    return zoom(img, 1.0 + amount)


def tighter(img: Image, amount: float, rng: np.random.Generator) -> Image:
    return zoom(img, 1.0 - amount)


def off_centre(img: Image, amount: float, rng: np.random.Generator) -> Image:
    angle = rng.uniform(0, 2 * np.pi)
    return zoom(img, 1.0, amount * np.cos(angle), amount * np.sin(angle))


def rotate(img: Image, degrees: float, rng: np.random.Generator) -> Image:
    h, w = img.shape[:2]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _warp(img, cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), sign * degrees, 1.0))


def gamma(img: Image, g: float, rng: np.random.Generator) -> Image:
    """Above 1 darker, below 1 brighter."""
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(img, table)


def low_contrast(img: Image, keep: float, rng: np.random.Generator) -> Image:
    """Contrast scaled to ``keep`` around the image's mean grey level."""
    mean = float(img.mean())
    return np.clip((img.astype(np.float32) - mean) * keep + mean + 0.5, 0, 255).astype(np.uint8)


def defocus(img: Image, sigma: float, rng: np.random.Generator) -> Image:
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma * _side_scale(img), borderType=cv2.BORDER_REPLICATE)


def motion(img: Image, length: float, rng: np.random.Generator) -> Image:
    """A straight blur ``length`` px long (at 48 px) in a random direction."""
    length *= _side_scale(img)
    if length < 1.0:
        return img
    k = int(np.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    angle = rng.uniform(0, np.pi)
    ts = np.linspace(-length / 2, length / 2, 4 * k)
    for t in ts:
        kernel[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] += 1.0
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REPLICATE)


def jpeg(img: Image, quality: float, rng: np.random.Generator) -> Image:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else img


def noise(img: Image, sigma: float, rng: np.random.Generator) -> Image:
    """Gaussian sensor noise, ``sigma`` grey levels of 255, fresh per image."""
    return np.clip(img + rng.normal(0.0, sigma, img.shape) + 0.5, 0, 255).astype(np.uint8)


def low_resolution(img: Image, face_px: float, rng: np.random.Generator) -> Image:
    """A face ``face_px`` wide (at 48 px) scaled up to the crop: what a face far from the lens gives."""
    h, w = img.shape[:2]
    side = max(4, int(round(face_px * _side_scale(img))))
    if side >= min(h, w):
        return img
    small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# white balance of a tungsten-lit scene before correction (B, G, R gains), reached at strength 1
_WARM_CAST = np.array([0.55, 0.85, 1.0], np.float32)


def colour_camera(img: Image, strength: float, rng: np.random.Generator) -> Image:
    """The scene as a colour camera gives it: a colour cast ``strength`` of the way to tungsten light, noise of its
    own in each colour channel (4 grey levels per unit of strength), returned as BGR for the runtime's grey path."""
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    gains = 1.0 + strength * (_WARM_CAST - 1.0)
    bgr = grey[..., None].astype(np.float32) * gains + rng.normal(0.0, 4.0 * strength, (*grey.shape, 3))
    return np.clip(bgr + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Shift:
    """A family of shifts: what it does, its function, and its strengths at three severities (mild, moderate, harsh),
    each with a label that says it in the family's own unit."""

    name: str
    kind: str  # framing | exposure | blur | jpeg | noise | rotation | resolution | colour
    apply: Callable[[Image, float, np.random.Generator], Image]
    levels: tuple[float, float, float]
    unit: str  # how a level reads: a format with {v}
    none: float  # the strength that leaves the image as it is: training draws between it and the harsh level

    def label(self, severity: int) -> str:
        return self.unit.format(v=self.levels[severity])


SEVERITIES = ("mild", "moderate", "harsh")
MODERATE = 1

SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("more_context", "framing", more_context, (0.08, 0.15, 0.30), "box +{v:.0%}", 0.0),
    Shift("tighter", "framing", tighter, (0.05, 0.10, 0.20), "box -{v:.0%}", 0.0),
    Shift("off_centre", "framing", off_centre, (0.05, 0.10, 0.15), "centre moved {v:.0%}", 0.0),
    Shift("darker", "exposure", gamma, (1.35, 1.7, 2.3), "gamma {v}", 1.0),
    Shift("brighter", "exposure", gamma, (0.75, 0.6, 0.45), "gamma {v}", 1.0),
    Shift("low_contrast", "exposure", low_contrast, (0.75, 0.5, 0.3), "contrast x{v}", 1.0),
    Shift("defocus", "blur", defocus, (0.6, 1.0, 1.5), "sigma {v} px", 0.0),
    Shift("motion", "blur", motion, (3.0, 5.0, 8.0), "{v:.0f} px", 0.0),
    Shift("jpeg", "jpeg", jpeg, (60, 35, 15), "quality {v:.0f}", 95),
    Shift("noise", "noise", noise, (5.0, 10.0, 16.0), "sigma {v:.0f}/255", 0.0),
    Shift("rotation", "rotation", rotate, (6.0, 12.0, 20.0), "{v:.0f} degrees", 0.0),
    Shift("low_resolution", "resolution", low_resolution, (32.0, 24.0, 16.0), "face {v:.0f} px", 48.0),
    Shift("colour_camera", "colour", colour_camera, (0.5, 1.0, 1.5), "cast x{v}", 0.0),
)}


def image_seed(shift: str, severity: int, index: int, seed: int = 0) -> int:
    """The seed of one image under one shift and severity: the same on every machine and run."""
    return zlib.crc32(f"{shift}/{severity}/{index}/{seed}".encode())


def shifted_images(images: np.ndarray, shift: str, severity: int, seed: int = 0) -> list[Image]:
    """A decoded split (N x 1 x H x W grey, uint8, as ``load_split`` gives) under one shift at one severity: a list of
    images, grey H x W or BGR H x W x 3, to be put into each model's layout with ``to_model_layout``."""
    family = SHIFTS[shift]
    level = family.levels[severity]
    out = []
    for i, img in enumerate(images):
        face = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
        out.append(family.apply(np.ascontiguousarray(face), level, np.random.default_rng(image_seed(shift, severity, i, seed))))
    return out
