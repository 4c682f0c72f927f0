"""Frequency-domain filters for models trained on Gaussian-blurred images.

Training images blurred with sigma ``s`` are Wiener-deconvolved once before training (``wiener_deconvolve``);
sharp inference inputs get the blur and the same deconvolution in one step (``blur_deconvolve``), so both
carry the same spectrum: the detail the blur left above the noise comes back instead of being blurred away.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _transfers(height: int, width: int, sigma: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Wiener H/(H^2+k) and blur-then-Wiener H^2/(H^2+k) on the 3H x 3W mirror-padded rfft grid."""
    fy = np.fft.fftfreq(3 * height)[:, None]
    fx = np.fft.rfftfreq(3 * width)[None, :]
    gauss = np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2))
    denom = gauss**2 + noise
    return gauss / denom, gauss**2 / denom


def _apply(batch: np.ndarray, transfer: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Filter N x C x H x W images; mirror padding makes the filter see no wrap-around edges."""
    h, w = batch.shape[-2:]
    pad = [(0, 0)] * (batch.ndim - 2) + [(h, h), (w, w)]
    out = np.empty(batch.shape, dtype=np.float64)
    for i in range(0, len(batch), chunk):  # chunks: the padded complex spectra of a whole data set would not fit
        padded = np.pad(batch[i : i + chunk].astype(np.float64), pad, mode="symmetric")
        filtered = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape[-2:])
        out[i : i + chunk] = filtered[..., h : 2 * h, w : 2 * w]
    return out


def wiener_deconvolve(images_u8: np.ndarray, sigma: float, noise: float) -> np.ndarray:
    """Undo a Gaussian blur of ``sigma`` where it left signal above ``noise`` (noise-to-signal power); uint8 out."""
    if len(images_u8) == 0:
        return images_u8.copy()
    wiener, _ = _transfers(*images_u8.shape[-2:], float(sigma), float(noise))
    return np.clip(np.rint(_apply(images_u8, wiener)), 0, 255).astype(np.uint8)


def blur_deconvolve(images: np.ndarray, sigma: float, noise: float) -> np.ndarray:
    """What ``wiener_deconvolve`` makes of an image blurred by ``sigma``: sharp inputs -> training look; float32."""
    if len(images) == 0:
        return images.astype(np.float32)
    _, combined = _transfers(*images.shape[-2:], float(sigma), float(noise))
    return np.clip(_apply(images, combined), 0, 255).astype(np.float32)
