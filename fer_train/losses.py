"""Losses on soft targets, so mixup/cutmix and label smoothing compose with any of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fer_runtime.options import OptionError


def one_hot_smoothed(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    target = F.one_hot(labels, num_classes).float()
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


class SoftTargetLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) or focal loss against a target distribution."""

    def __init__(self, kind: str = "ce", class_weights: torch.Tensor | None = None, gamma: float = 2.0):
        super().__init__()
        if kind not in ("ce", "weighted_ce", "focal"):
            raise OptionError(f"unknown loss {kind!r}")
        if kind == "weighted_ce" and class_weights is None:
            raise ValueError("weighted_ce needs class weights")
        self.kind = kind
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -target * log_p
        if self.kind == "focal":
            per_class = per_class * (1.0 - log_p.exp()).pow(self.gamma)
        if self.class_weights.numel():
            w = self.class_weights.to(per_class)
            return (per_class * w).sum(1).sum() / (target * w).sum()
        return per_class.sum(1).mean()


def class_weights_from_counts(counts: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights (power 1) or softened (power 0.5), mean 1."""
    w = counts.float().clamp(min=1).pow(-power)
    return w * len(w) / w.sum()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Hinton KD: KL(teacher_T || student_T) * T^2, batch mean."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * t * t
