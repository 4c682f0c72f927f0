"""One registry of classifiers by name: ``create_model(name, num_classes=, in_chans=, **kw)``.

Own compact CNNs for 48x48 faces, plus any timm model as ``timm:<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fer_runtime.errors import FerError
from fer_runtime.options import json_or_text

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class ModelError(FerError, ValueError):
    """Unknown model name or unusable weights."""


def register(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY) + ["timm:<name>"]


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that also exports to ONNX when the output size does not divide the input.

    The ONNX exporter only handles the divisible case (one AveragePool); otherwise the same bins PyTorch
    uses (start floor(i*H/out), end ceil((i+1)*H/out)) are taken as slices and averaged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_h, out_w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        h, w = x.shape[-2:]
        out_h, out_w = out_h or h, out_w or w
        if h % out_h == 0 and w % out_w == 0:
            return super().forward(x)
        # ceil as (a + b - 1) // b: the exporter writes // as ONNX's Div, which truncates, and -(-a // b) on a negative
        # a then floors instead (bins [0:1], [3:4] where PyTorch takes [0:2], [3:5])
        rows = [x[..., (i * h) // out_h : ((i + 1) * h + out_h - 1) // out_h, :].mean(-2, keepdim=True) for i in range(out_h)]
        x = torch.cat(rows, -2)
        cols = [x[..., (j * w) // out_w : ((j + 1) * w + out_w - 1) // out_w].mean(-1, keepdim=True) for j in range(out_w)]
        return torch.cat(cols, -1)


def _scaled(channels: int, width: float, divisor: int = 8) -> int:
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


class SimpleCNN(nn.Module):
    """The seed baseline: three conv blocks and a dense head (about 1.5M parameters)."""

    def __init__(self, num_classes: int = 7, in_chans: int = 1, dropout: float = 0.4):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_chans, 32), _conv_bn(32, 32), nn.MaxPool2d(2),
            _conv_bn(32, 64), _conv_bn(64, 64), nn.MaxPool2d(2),
            _conv_bn(64, 128), _conv_bn(128, 128), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(128 * 16, 512), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class VGGNet(nn.Module):
    """VGG-style net for 48x48 faces: 4 stages of 3x3 convs with BN, max-pool between.

    width=1.0 gives 64/128/256/512 channels (about 5.9M parameters at depths 2): strong enough
    to be a teacher. A smaller width makes a plain-conv student that quantizes well. ``depths`` is
    the conv count of every stage, or one per stage (e.g. ``[1, 2, 2, 2]``: one conv at 48x48, where a
    conv costs four times the MACs and memory traffic of the next stage's).
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        width: float = 1.0,
        depths: int | list[int] = 2,
        dropout: float = 0.3,
        hidden: int = 256,
        pool: int = 3,
    ):
        super().__init__()
        chans = [_scaled(c, width) for c in (64, 128, 256, 512)]
        depths = [depths] * len(chans) if isinstance(depths, int) else list(depths)
        if len(depths) != len(chans) or min(depths) < 1:
            raise ModelError(f"depths needs {len(chans)} stage depths of at least 1, got {depths}")
        layers: list[nn.Module] = []
        cin = in_chans
        for i, c in enumerate(chans):
            for _ in range(depths[i]):
                layers.append(_conv_bn(cin, c))
                cin = c
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        # Keep a coarse spatial map (pool x pool): where the mouth and eyes are matters for expressions.
        head: list[nn.Module] = [AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Dropout(dropout)]
        cin = cin * pool * pool
        if hidden:
            head += [nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = hidden
        head.append(nn.Linear(cin, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, mid, k=1))
        layers += [_conv_bn(mid, mid, stride=stride, groups=mid), _conv_bn(mid, cout, k=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileFER(nn.Module):
    """MobileNetV2-style student for 48x48 faces with a width multiplier.

    Stages at 48, 24, 12, 6 and 3 pixels; depthwise convs keep FLOPs low for INT8 edge use.
    """

    # (expansion, channels, repeats, stride)
    CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1), (4, 160, 2, 2))

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        width: float = 1.0,
        dropout: float = 0.2,
        last_channels: int = 512,
    ):
        super().__init__()
        cin = _scaled(32, width)
        layers: list[nn.Module] = [_conv_bn(in_chans, cin)]
        for expand, c, repeats, stride in self.CONFIG:
            cout = _scaled(c, width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        last = _scaled(last_channels, max(width, 1.0))
        layers.append(_conv_bn(cin, last, k=1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNetFER(nn.Module):
    """Small pre-pooled residual net for 48x48 faces (basic blocks, plain convs)."""

    def __init__(self, num_classes: int = 7, in_chans: int = 1, width: float = 1.0, blocks: int = 2, dropout: float = 0.2):
        super().__init__()
        chans = [_scaled(c, width) for c in (64, 128, 256, 512)]
        self.stem = _conv_bn(in_chans, chans[0])
        stages: list[nn.Module] = []
        cin = chans[0]
        for i, c in enumerate(chans):
            for j in range(blocks):
                stages.append(_BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride=stride), _conv_bn(cout, cout, act=False))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, k=1, stride=stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@register("simple_cnn")
def simple_cnn(num_classes: int = 7, in_chans: int = 1, **kw) -> nn.Module:
    return SimpleCNN(num_classes, in_chans, **kw)


@register("vgg")
def vgg(num_classes: int = 7, in_chans: int = 1, **kw) -> nn.Module:
    return VGGNet(num_classes, in_chans, **kw)


# the shipped models' architecture (models/recipes/ferplus_base.toml): 24.7M MACs at 48x48, about 0.3 ms a face in INT8
EDGE_VGG = {"width": 0.25, "pool": 2, "depths": [1, 2, 2, 2]}


@register("edge")
def edge(num_classes: int = 7, in_chans: int = 1, **kw) -> nn.Module:
    """The fer-train default: the shipped models' VGG, as fast as they are (``--arch-arg`` still overrides)."""
    return VGGNet(num_classes, in_chans, **{**EDGE_VGG, **kw})


@register("mobile")
def mobile(num_classes: int = 7, in_chans: int = 1, **kw) -> nn.Module:
    return MobileFER(num_classes, in_chans, **kw)


@register("resnet")
def resnet(num_classes: int = 7, in_chans: int = 1, **kw) -> nn.Module:
    return ResNetFER(num_classes, in_chans, **kw)


def parse_arch_args(items: list[str]) -> dict:
    """``["width=0.5", "pool=2"]`` -> ``{"width": 0.5, "pool": 2}`` (values read as JSON where they parse)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ModelError(f"--arch-arg needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = json_or_text(value)
    return out


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    pretrained: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model, or ``timm:<name>``; ``pretrained`` is a local weights file."""
    if name.startswith("timm:"):
        return _create_timm(name[5:], num_classes, in_chans, pretrained, **kwargs)
    if name not in _REGISTRY:
        raise ModelError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    try:
        model = _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"bad --arch-arg for {name!r}: {exc}") from None
    if pretrained:
        load_matching_weights(model, pretrained)
    return model


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: str | None, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install 'fer-toolchain[train]'") from None
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r} (see timm.list_models())")
    if pretrained and Path(pretrained).is_file():
        # timm adapts the stem to in_chans and drops a classifier of another size.
        overlay = {"file": str(Path(pretrained).resolve())}
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    if pretrained and pretrained != "hub":
        raise ModelError(f"pretrained weights file not found: {pretrained}")
    if pretrained == "hub":
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
        except Exception as exc:
            raise ModelError(
                f"could not download pretrained weights for timm:{name} ({type(exc).__name__}); "
                "this machine may be offline: download the weights elsewhere and pass the file with --pretrained PATH"
            ) from None
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def load_matching_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load tensors whose names and shapes match; return the names that were skipped."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights from {path}: {type(exc).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError(f"no tensor in {path} matches the model's layers")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


# Expected INT8 time a face: MACs times the shipped edge model's measured rate (ONNX Runtime, batch 1, one thread, on
# a 2-core AMD EPYC with AVX2; RESULTS.md "Own data"). A rule of thumb: wide layers run at a better rate than this.
INT8_MS_PER_MMAC = 0.33 / 24.7
EDGE_MS = 1.0  # about 5-10x this on a Raspberry Pi-class CPU: still real time there
REAL_TIME_MS = 8.0  # 30 frames/s with four faces on one core of two (the other captures and detects)


@dataclass(frozen=True)
class InferenceCost:
    macs: int
    int8_ms: float  # expected, on the reference CPU

    @property
    def real_time(self) -> bool:
        return self.int8_ms <= REAL_TIME_MS

    def describe(self) -> str:
        if self.int8_ms <= EDGE_MS:
            kind = "edge class: real time on a Raspberry Pi-class CPU too"
        elif self.real_time:
            kind = "desktop class: real time on a 2-core laptop CPU, not on a Raspberry Pi-class one"
        else:
            kind = "not real time on a 2-core CPU"
        return (f"{self.macs / 1e6:.1f}M MACs a face; expected INT8 about {self.int8_ms:.2g} ms a face on a 2-core AVX2 "
                f"CPU ({kind})")

    def warning(self) -> str:
        return (f"this model needs about {self.int8_ms:.0f} ms a face in INT8 on a 2-core CPU, over the {REAL_TIME_MS:g} ms "
                "that 30 frames/s with four faces allows: leave --arch out for the shipped models' edge architecture")


@torch.no_grad()
def inference_cost(model: nn.Module, channels: int, input_size: tuple[int, int]) -> InferenceCost:
    """Multiply-accumulates of one face through the convolutions and linear layers, and the INT8 time they suggest."""
    total = [0]

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        per_output = module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.in_features
        total[0] += per_output * output[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return InferenceCost(total[0], total[0] / 1e6 * INT8_MS_PER_MMAC)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
