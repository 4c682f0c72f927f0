"""Quantization-aware training (``fer-train --qat``): the forward pass rounds as ``fer-export --int8`` will.

ONNX Runtime's static QDQ quantization stores each conv and linear weight as int8, symmetric per output
channel, and rounds activations to uint8 with one scale per tensor: the model input, every ReLU output,
the logits; a pooled tensor stays on its input's grid. A model trained with those roundings in its forward
pass (straight-through gradients) learns weights that survive them, so its INT8 file loses less against its
fp32 source than a model quantized after training. For vgg at pool=2 these are exactly ORT's rounding points
(tests/test_qat.py compares them with an INT8 file); where a pool exports as an op ORT leaves in float (e.g.
ReduceMean for a size that does not divide) or at residual adds, an approximation.

The layers keep their parameters and names (only their class changes), so checkpoints, EMA and
``fer-export`` are unchanged; export builds a plain model from the checkpoint and quantizes it with ORT.
Batch norm is not folded here: per-channel symmetric rounding of a conv weight is the same before and
after the fold scales each output channel. Activation ranges are the batch's own min and max, where ORT
calibrates them once; the rounding noise is what the weights adapt to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fer_train.models import AdaptiveAvgPool2d, ModelError


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 symmetric rounding per output channel (dim 0), gradient passed straight through."""
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
    return w + ((w.detach() / scale).round().clamp(-127, 127) * scale - w.detach())


def fake_quant_activation(x: torch.Tensor, grid_of: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 asymmetric rounding with one scale for the tensor, on the grid of the range of ``grid_of`` (default
    ``x``; the range always holds 0), gradient straight through."""
    lo, hi = torch.aminmax((x if grid_of is None else grid_of).detach())
    lo, hi = lo.float().clamp(max=0.0), hi.float().clamp(min=0.0)
    scale = (hi - lo).clamp_min(1e-12) / 255.0
    zero = (-lo / scale).round()
    # round(x / scale) clamped to [-zero, 255 - zero] is (q - zero) for q = clamp(round(x / scale) + zero, 0, 255);
    # in-place, since these passes over every activation are most of what --qat costs
    error = (x.detach().float() / scale).round_().clamp_(min=-zero, max=255.0 - zero).mul_(scale).sub_(x.detach())
    return x + error.to(x.dtype)


class QATConv2d(nn.Conv2d):
    quantize_input = False  # the model input: set on the first conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fake_quant_activation(x) if self.quantize_input else x
        return self._conv_forward(x, fake_quant_weight(self.weight), self.bias)


class QATLinear(nn.Linear):
    quantize_output = False  # the logits: set on the last linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, fake_quant_weight(self.weight), self.bias)
        return fake_quant_activation(out) if self.quantize_output else out


class QATReLU(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_activation(F.relu(x))


class QATAdaptiveAvgPool2d(AdaptiveAvgPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_activation(super().forward(x), grid_of=x)


QAT_CLASSES = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear, nn.ReLU: QATReLU, AdaptiveAvgPool2d: QATAdaptiveAvgPool2d}


def prepare_qat(model: nn.Module) -> nn.Module:
    """``model``, in place, with the INT8 rounding in its forward pass. The first conv (or linear) rounds the model
    input and the last linear its output, the logits, as the registered models order their layers."""
    for module in model.modules():
        if type(module) in QAT_CLASSES:
            module.__class__ = QAT_CLASSES[type(module)]
    weighted = [m for m in model.modules() if isinstance(m, QATConv2d | QATLinear)]
    if not weighted:
        raise ModelError("--qat: the model has no Conv2d or Linear layer to quantize")
    if isinstance(weighted[0], QATConv2d):
        weighted[0].quantize_input = True
    if isinstance(weighted[-1], QATLinear):
        weighted[-1].quantize_output = True
    return model


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, QATConv2d | QATLinear) for m in model.modules())
