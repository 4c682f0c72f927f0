"""How a run learns: the optimizer and its per-step schedule, the gradient scaler, the loss and the class-balanced
sampling weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from fer_train.config import TrainConfig
from fer_train.engine import ModelEma, Optimisation
from fer_train.losses import SoftTargetLoss, class_weights_from_counts
from fer_train.placement import Placement


def make_optimisation(cfg: TrainConfig, model: nn.Module, ema: ModelEma | None, n_train: int,
                      placement: Placement) -> Optimisation:
    """AdamW or SGD+Nesterov without weight decay on biases and norms, cosine schedule with warmup per step."""
    per_rank = -(-n_train // placement.world)
    steps_per_epoch = max(1, -(-per_rank // cfg.batch_size) // cfg.accum_steps) if n_train else 0
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.opt == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    scheduler = cosine_with_warmup(optimizer, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch,
                                   cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if placement.amp == "fp16" and placement.device.type == "cuda" else None
    return Optimisation(optimizer, scheduler, scaler, cfg.accum_steps, cfg.clip_grad, placement.amp, ema)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                       floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` steps, then a cosine down to ``floor`` times the peak at step ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loss(cfg: TrainConfig, labels: torch.Tensor | None, num_classes: int) -> tuple[nn.Module, torch.Tensor | None]:
    """The loss on soft targets, and per-image sampling weights for a class-balanced sampler."""
    counts = torch.bincount(labels, minlength=num_classes) if labels is not None else None
    weights = class_weights_from_counts(counts) if cfg.loss == "weighted_ce" and counts is not None else None
    loss_fn = SoftTargetLoss(cfg.loss, weights, gamma=cfg.focal_gamma)
    sample_weights = None
    if cfg.sampler != "random" and labels is not None:
        sample_weights = class_weights_from_counts(counts, 1.0 if cfg.sampler == "balanced" else 0.5)[labels].double()
    return loss_fn, sample_weights
