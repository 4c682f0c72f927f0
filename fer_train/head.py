"""A trained model (``--init``) meets the user's classes: its classifier rows matched by meaning.

A data class the model knows (``anger`` and ``angry`` are one class: ``fer_runtime.data.classes.canonical_class``)
keeps the model's row; a class it does not know gets a fresh row; the model's classes the data lacks are dropped. The
early layers can be kept as they are (``--freeze N``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fer_runtime.data.classes import canonical_class
from fer_runtime.errors import DataError
from fer_train.checkpoint import CheckpointError


def class_rows(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[int | None]:
    """Per data class, the model's row of the same meaning, or None for a class the model lacks. Two data classes of
    one meaning (``anger`` and ``angry``) would start from one row as two outputs: refused."""
    meanings: dict[str, str] = {}
    for c in data_classes:
        if (other := meanings.setdefault(canonical_class(c), c)) != c:
            raise DataError(f"the classes {other!r} and {c!r} are one expression: merge their folders into one")
    keys = [canonical_class(c) for c in model_classes]
    return [keys.index(canonical_class(c)) if canonical_class(c) in keys else None for c in data_classes]


def describe_rows(model_classes: Sequence[str], data_classes: Sequence[str], rows: list[int | None]) -> str:
    kept = [f"{c}<-{model_classes[r]}" if c != model_classes[r] else c for c, r in zip(data_classes, rows) if r is not None]
    new = [c for c, r in zip(data_classes, rows) if r is None]
    dropped = [c for i, c in enumerate(model_classes) if i not in rows]
    return (f"classes kept {', '.join(kept) or 'none'}; new {', '.join(new) or 'none'}; "
            f"dropped {', '.join(dropped) or 'none'}")


def classifier_of(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The layer that scores the classes: timm's ``get_classifier()``, else the last ``nn.Linear`` with one output per
    class."""
    if hasattr(model, "get_classifier") and isinstance(model.get_classifier(), nn.Linear):
        layer = model.get_classifier()
        return next(name for name, m in model.named_modules() if m is layer), layer
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise CheckpointError(f"--init: no linear classifier with {num_classes} outputs found to map the classes onto")
    return found[-1]


@torch.no_grad()
def remap_classifier(model: nn.Module, num_classes: int, rows: list[int | None], seed: int = 0) -> None:
    """Replace the classifier with one row per entry of ``rows``: the old row where given, else a fresh one drawn like
    the old rows (their weight spread, their mean bias) so a new class starts on an equal footing."""
    name, old = classifier_of(model, num_classes)
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None)
    generator = torch.Generator().manual_seed(seed)
    new.weight.copy_(torch.randn(new.weight.shape, generator=generator) * old.weight.std())
    if old.bias is not None:
        new.bias.fill_(float(old.bias.mean()))
    for i, r in enumerate(rows):
        if r is not None:
            new.weight[i] = old.weight[r]
            if old.bias is not None:
                new.bias[i] = old.bias[r]
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new.to(old.weight.dtype))


def freeze_leading_convolutions(model: nn.Module, count: int) -> int:
    """Stop training the first ``count`` convolutions and the BatchNorms right after them (weights and statistics);
    returns how many convolutions there are."""
    modules = list(model.modules())
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if count > len(convs):
        raise CheckpointError(f"--freeze {count}: the model has {len(convs)} convolutions")
    for i in convs[:count]:
        frozen = [modules[i]] + ([modules[i + 1]] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else [])
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(_normalise_as_in_evaluation)
    return len(convs)


def _normalise_as_in_evaluation(module: nn.Module, _inputs: tuple) -> None:
    """A frozen BatchNorm normalises with its running statistics and keeps them, in training too."""
    module.train(False)
