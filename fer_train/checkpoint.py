"""Checkpoints: one dict with everything needed to rebuild, resume or export a run.

Written atomically (temporary file, then rename) and read with ``weights_only``
so a foreign pickle is never executed.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_runtime.contract import CONTRACT_VERSION, ContractError, ModelContract
from fer_runtime.errors import FerError, OutputError
from fer_runtime.outputs import atomic_path
from fer_train.models import create_model

FORMAT = "fer-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(FerError, ValueError):
    """A file is not a usable fer-train checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) as a RuntimeError
            full = shutil.disk_usage(tmp.parent).free < 1 << 20
            reason = "No space left on device" if full else str(exc).strip().splitlines()[-1][:200]
            raise OutputError(f"cannot write {path}: {reason}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give its checkpoint, e.g. {path / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a fer-train checkpoint (not a PyTorch file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a fer-train checkpoint ({type(exc).__name__} while reading)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fer-train checkpoint (no '{FORMAT}' marker)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}; this fer-train reads version {FORMAT_VERSION}")
    for key in ("model", "state_dict", "contract"):
        if key not in state:
            raise CheckpointError(f"{path} is missing '{key}'")
    return state


def contract_of(state: dict[str, Any]) -> ModelContract:
    try:
        return ModelContract.from_dict(upgraded_contract(state["contract"]))
    except (ContractError, TypeError) as exc:
        raise CheckpointError(f"checkpoint contract is invalid: {exc}") from None


def upgraded_contract(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's contract in the current version, so runs started before a contract change still resume.

    Older contracts upgrade when every field the current version lacks is unset (0, empty); a checkpoint
    whose contract sets such a field (the retired input conditioning) is refused: it needs retraining.
    """
    if int(data.get("version", 1)) >= CONTRACT_VERSION:
        return data
    known = set(ModelContract.__dataclass_fields__)
    retired = sorted(k for k, v in data.items() if k not in known and v)
    if retired:
        raise ContractError(f"the model was trained with {', '.join(retired)} set, which this fer-toolchain no longer "
                            "supports (it was for a blurred FER2013 copy): train it again")
    return {**{k: v for k, v in data.items() if k in known}, "version": CONTRACT_VERSION}


def model_from_checkpoint(state: dict[str, Any], prefer_ema: bool = True) -> tuple[nn.Module, ModelContract]:
    """Rebuild exactly the architecture saved in the checkpoint and load its weights."""
    contract = contract_of(state)
    spec = state["model"]
    model = create_model(spec["name"], num_classes=contract.num_classes, in_chans=contract.channels, **spec.get("kwargs", {}))
    weights = state.get("ema_state_dict") if prefer_ema and state.get("ema_state_dict") else state["state_dict"]
    if state.get("pruned"):
        fit_modules_to_state_dict(model, weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit model {spec['name']}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, contract


def fit_modules_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Resize Conv2d/BatchNorm2d/Linear layers to the shapes in ``state_dict``.

    Structured pruning removes channels, so a pruned checkpoint rebuilds its
    registry architecture and then narrows each layer to the saved widths.
    """
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state_dict:
            continue
        shape = state_dict[key].shape
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = shape[0]
            module.in_channels = shape[0] if depthwise else shape[1] * module.groups
            if depthwise:
                module.groups = shape[0]
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(module, buf, torch.zeros(shape[0]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = shape[0], shape[1]
        else:
            continue
        module.weight = nn.Parameter(torch.empty(shape))
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(state_dict[f"{key[:-6]}bias"].shape))
