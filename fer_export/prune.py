"""Structured channel pruning with Torch-Pruning: a smaller dense network, not a mask."""

from __future__ import annotations

import torch

try:  # torch_pruning imports timm itself, under a bare except that would swallow a Ctrl-C arriving then (the export
    import timm  # noqa: F401 - went on): imported here first, an interrupt stays one, and it costs nothing more
except ImportError:
    pass
import torch_pruning as tp
from torch import nn

from fer_runtime.contract import ModelContract
from fer_runtime.errors import FerError


class PruneError(FerError, ValueError):
    pass


def count_flops_params(model: nn.Module, contract: ModelContract) -> tuple[int, int]:
    """Multiply-accumulates and parameters at batch 1."""
    h, w = contract.input_size
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, contract.channels, h, w))
    model.train(was_training)
    return int(macs), int(params)


def prune_channels(
    model: nn.Module,
    contract: ModelContract,
    ratio: float | None = None,
    flops_speedup: float | None = None,
    global_pruning: bool = True,
    steps: int = 1,
    round_to: int = 4,
) -> nn.Module:
    """Remove whole channels by L2 group magnitude until ``ratio`` of channels or a FLOPs speed-up is reached.

    The classifier layer is never pruned, so the class outputs stay as they are.
    """
    if ratio is None and flops_speedup is None:
        raise PruneError("give a pruning ratio or a FLOPs speed-up target")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise PruneError(f"pruning ratio must be in (0, 1), got {ratio}")
    if flops_speedup is not None and flops_speedup <= 1.0:
        raise PruneError(f"FLOPs speed-up must be above 1, got {flops_speedup}")
    model = model.eval().cpu()
    h, w = contract.input_size
    example = torch.zeros(1, contract.channels, h, w)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == contract.num_classes]
    base_macs, _ = count_flops_params(model, contract)
    target_steps = steps if ratio is not None else 20
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=global_pruning,
        pruning_ratio=ratio if ratio is not None else 0.9, iterative_steps=target_steps, ignored_layers=classifier,
        round_to=round_to, max_pruning_ratio=0.9,
    )
    for _ in range(target_steps):
        pruner.step()
        if flops_speedup is not None:
            macs, _ = count_flops_params(model, contract)
            if base_macs / macs >= flops_speedup:
                break
    return model
