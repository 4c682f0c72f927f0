"""Checks the train split against validation for an image-quality shift (sharpness), and picks the
inference blur that makes validation inputs look like training inputs (``input_blur`` in the contract)."""

from __future__ import annotations

import cv2
import numpy as np

from fer_runtime.contract import ModelContract
from fer_runtime.deblur import wiener_deconvolve

SIGMAS = np.round(np.arange(0.0, 5.01, 0.25), 2)
TRAINED_CONDITIONING = "trained_conditioning"  # provenance key, set when inference conditioning was changed


def sharpness(images_u8: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Mean absolute Laplacian of up to ``sample`` images (N x C x H x W uint8)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images_u8), size=min(sample, len(images_u8)), replace=False)
    x = images_u8[idx].astype(np.float32).mean(1)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def estimate_input_blur(train_u8: np.ndarray, val_u8: np.ndarray, tolerance: float = 2.0) -> tuple[float, dict]:
    """Blur sigma for inference inputs, 0 when val is not much sharper than train (ratio below ``tolerance``).

    Uses image statistics only, never labels.
    """
    s_train, s_val = sharpness(train_u8), sharpness(val_u8)
    info = {"train_sharpness": s_train, "val_sharpness": s_val, "ratio": s_val / max(s_train, 1e-6)}
    if info["ratio"] < tolerance:
        return 0.0, info
    rng = np.random.default_rng(1)
    sample = val_u8[rng.choice(len(val_u8), size=min(1000, len(val_u8)), replace=False)]
    best, best_gap = 0.0, abs(s_val - s_train)
    for sigma in SIGMAS[1:]:
        gap = abs(sharpness(_gaussian_blur(sample, sigma)) - s_train)
        if gap < best_gap:
            best, best_gap = float(sigma), gap
    info["input_blur"] = best
    return best, info


def trained_conditioning(contract: ModelContract) -> tuple[float, float]:
    """(blur sigma, deconvolution noise) the training images were seen with; ``with_inference_blur`` keeps it."""
    kept = contract.provenance.get(TRAINED_CONDITIONING)
    if kept:
        return float(kept["input_blur"]), float(kept["input_deconv"])
    return contract.input_blur, contract.input_deconv


def with_inference_blur(contract: ModelContract, sigma: float) -> ModelContract:
    """The contract with another inference blur sigma, say one picked on the validation split.

    Only inference changes: the training images' own conditioning is recorded in the provenance, so
    ``training_view`` (calibration, scoring the train split) still deconvolves them as in training.
    """
    blur, noise = trained_conditioning(contract)
    return contract.replace(
        input_blur=float(sigma), input_deconv=noise if sigma > 0 else 0.0,
        provenance={**contract.provenance, TRAINED_CONDITIONING: {"input_blur": blur, "input_deconv": noise}},
    )  # fmt: skip


def training_view(images_u8: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Training-split images as the model trains on them: Wiener-deconvolved when the contract says so."""
    blur, noise = trained_conditioning(contract)
    if noise <= 0:
        return images_u8
    return wiener_deconvolve(images_u8, blur, noise)


def _power_spectrum(images_u8: np.ndarray) -> np.ndarray:
    x = images_u8.astype(np.float64).mean(1)
    return (np.abs(np.fft.fft2(x - x.mean((1, 2), keepdims=True))) ** 2).mean(0)


def _gaussian_blur(images_u8: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([[cv2.GaussianBlur(ch, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT) for ch in im]
                     for im in images_u8])  # fmt: skip


def spectral_blur_sigma(train_u8: np.ndarray, val_u8: np.ndarray, max_freq: float = 0.15, sample: int = 2000) -> float:
    """The Gaussian sigma that, blurring val, best reproduces train's power spectrum below ``max_freq``.

    Compares log power at every frequency (a free gain absorbs contrast differences). Deconvolution needs
    this sigma; ``estimate_input_blur`` only matches the overall sharpness.
    """
    rng = np.random.default_rng(0)
    pick = lambda a: a[rng.choice(len(a), size=min(sample, len(a)), replace=False)]  # noqa: E731
    train, val = pick(train_u8), pick(val_u8)
    fy, fx = np.meshgrid(np.fft.fftfreq(train.shape[2]), np.fft.fftfreq(train.shape[3]), indexing="ij")
    band = (fy**2 + fx**2 > 0) & (fy**2 + fx**2 < max_freq**2)
    target = np.log(_power_spectrum(train)[band])
    best, best_err = 0.0, np.inf
    for sigma in np.arange(0.25, 6.001, 0.125):
        resid = target - np.log(_power_spectrum(np.rint(_gaussian_blur(val, sigma)))[band])
        err = float(((resid - resid.mean()) ** 2).mean())
        if err < best_err:
            best, best_err = float(sigma), err
    return best
