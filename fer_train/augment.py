"""Augmentation on whole batches in memory (no per-image decode on the hot path).

Geometric jitter (crop-like shift and scale, flip, small rotation) is one
``affine_grid`` + ``grid_sample`` per batch. Camera degradations (blur, JPEG,
noise, exposure, a small face, a colour camera's grey path) and
RandAugment/AutoAugment, when chosen, run per image on uint8 tensors. Mixup and
CutMix return soft targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fer_runtime.data.shifts import MODERATE, SHIFTS
from fer_runtime.options import OptionError


@dataclass
class AugmentConfig:
    shift: float = 0.1  # max translation, fraction of the side (a random crop of the padded image)
    scale: tuple[float, float] = (0.9, 1.1)
    rotation: float = 10.0  # degrees
    hflip: bool = True
    erasing: float = 0.0  # probability of RandomErasing per image
    policy: str = "none"  # none | randaugment | autoaugment
    mixup: float = 0.0  # Beta(alpha, alpha); 0 disables
    cutmix: float = 0.0
    mix_prob: float = 1.0  # probability that a batch is mixed when mixup/cutmix is on
    degrade: float = 0.0  # probability that an image gets one or two camera degradations (fer_runtime.data.shifts)
    fixed_shift: str | None = None  # every image under this shift at its moderate severity


def normalize(images_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = images_u8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def apply_policy(images_u8: torch.Tensor, policy: str) -> torch.Tensor:
    """Per-image RandAugment/AutoAugment on a uint8 batch (CPU)."""
    if policy == "none":
        return images_u8
    from torchvision.transforms import v2

    op = {"randaugment": v2.RandAugment(num_ops=2, magnitude=9), "autoaugment": v2.AutoAugment()}.get(policy)
    if op is None:
        raise OptionError(f"unknown augmentation policy {policy!r}")
    return torch.stack([op(img) for img in images_u8])


# the shift families drawn by ``degrade``, in the order a camera applies them (optics, exposure, sensor, codec);
# framing and rotation come from ``geometric``
DEGRADATIONS = ("low_resolution", "defocus", "motion", "darker", "brighter", "low_contrast", "colour_camera", "noise",
                "jpeg")


def degrade(images_u8: torch.Tensor, p: float) -> torch.Tensor:
    """Each image, with probability ``p``, through one or two camera degradations, each at a strength drawn between
    none and the family's harsh level: the shift report's own functions, so training sees what it is scored on. Draws
    come from torch's generator, so a resumed run repeats them."""
    if p <= 0:
        return images_u8
    chosen = (torch.rand(len(images_u8)) < p).nonzero().flatten().tolist()
    out = images_u8.clone() if chosen else images_u8
    for i in chosen:
        picks = torch.randperm(len(DEGRADATIONS))[: 1 + int(torch.rand(1) < 0.5)].sort().values.tolist()
        strengths = torch.rand(len(picks)).tolist()
        steps = [(SHIFTS[DEGRADATIONS[k]], t) for k, t in zip(picks, strengths)]
        out[i] = _through(out[i], [(f, f.none + t * (f.levels[-1] - f.none)) for f, t in steps])
    return out


def fixed_shift(images_u8: torch.Tensor, name: str) -> torch.Tensor:
    """Every image under one shift at its moderate severity: a model trained on the shifted images themselves, whose
    loss under that shift is the information floor the shift report is read against."""
    family = SHIFTS[name]
    out = images_u8.clone()
    for i in range(len(out)):
        out[i] = _through(out[i], [(family, family.levels[MODERATE])])
    return out


def _through(image: torch.Tensor, steps: list) -> torch.Tensor:
    """One uint8 C x H x W image through (family, strength) steps, as a camera gives it to the runtime (grey through
    its BGR-to-grey conversion); the noise generator seeded from torch's."""
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,))))
    img = image.numpy()
    face = img[0] if img.shape[0] == 1 else cv2.cvtColor(img.transpose(1, 2, 0), cv2.COLOR_RGB2BGR)
    for family, strength in steps:
        face = family.apply(face, strength, rng)
    if img.shape[0] == 1:
        return torch.from_numpy(face if face.ndim == 2 else cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))[None]
    face = cv2.cvtColor(face if face.ndim == 3 else cv2.cvtColor(face, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(face.transpose(2, 0, 1).copy())


def geometric(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Random shift/scale/rotation/flip of a float batch, edges replicated."""
    b = x.shape[0]
    dev = x.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(cfg.rotation)
    scale = torch.empty(b, device=dev).uniform_(*cfg.scale)
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b, device=dev)
    tx = (torch.rand(b, device=dev) * 2 - 1) * cfg.shift * 2  # grid units span [-1, 1]
    ty = (torch.rand(b, device=dev) * 2 - 1) * cfg.shift * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erasing(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 0.2)) -> torch.Tensor:
    """Erase one random rectangle per chosen image with noise (RandomErasing)."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    out = x.clone()
    chosen = (torch.rand(b) < p).nonzero().flatten().tolist()
    for i in chosen:
        frac = torch.empty(1).uniform_(*area).item()
        aspect = math.exp(torch.empty(1).uniform_(math.log(0.3), math.log(3.3)).item())
        eh = min(h, max(1, int(round(math.sqrt(frac * h * w * aspect)))))
        ew = min(w, max(1, int(round(math.sqrt(frac * h * w / aspect)))))
        top = int(torch.randint(0, h - eh + 1, (1,)))
        left = int(torch.randint(0, w - ew + 1, (1,)))
        out[i, :, top : top + eh, left : left + ew] = torch.randn_like(out[i, :, top : top + eh, left : left + ew])
    return out


def mix_batch(x: torch.Tensor, target: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one chosen at random when both are on) with soft targets."""
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if not modes or torch.rand(1).item() >= cfg.mix_prob:
        return x, target
    mode = modes[int(torch.randint(len(modes), (1,)))]
    alpha = cfg.mixup if mode == "mixup" else cfg.cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if mode == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    return x, lam * target + (1 - lam) * target[perm]


def train_transform(images_u8: torch.Tensor, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    images_u8 = degrade(apply_policy(images_u8, cfg.policy), cfg.degrade)
    if cfg.fixed_shift:
        images_u8 = fixed_shift(images_u8, cfg.fixed_shift)
    x = normalize(images_u8, mean, std)
    x = geometric(x, cfg)
    return random_erasing(x, cfg.erasing)
