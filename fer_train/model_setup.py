"""The model a run trains: a registry model, a checkpoint's or an exported ONNX file's (``--init``), or the resumed
run's; QAT, EMA and DDP around it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fer_runtime.contract import ModelContract
from fer_train.checkpoint import CheckpointError, contract_of, fit_modules_to_state_dict, load_checkpoint, model_from_checkpoint
from fer_train.config import TrainConfig
from fer_train.data_prep import PreparedData
from fer_train.engine import ModelEma
from fer_train.head import class_rows, describe_rows, freeze_leading_convolutions, remap_classifier
from fer_train.models import count_parameters, create_model, inference_cost, parse_arch_args
from fer_train.onnx_init import file_sha256, is_onnx_init, model_from_onnx, refit_batchnorm
from fer_train.placement import Placement
from fer_train.qat import prepare_qat


@dataclass
class BuiltModel:
    model: nn.Module
    train_model: nn.Module  # the model, or its DDP wrapper
    ema: ModelEma | None
    contract: ModelContract
    name: str
    kwargs: dict
    pruned: bool

    def for_eval(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_model(cfg: TrainConfig, data: PreparedData, resume_state: dict | None, placement: Placement) -> BuiltModel:
    """A registry model, a checkpoint's (--init, e.g. a pruned one), or the resumed run's; EMA and DDP around it."""
    model, name, kwargs, contract, pruned = _initial_model(cfg, data, resume_state)
    if resume_state is not None and pruned:
        fit_modules_to_state_dict(model, resume_state["state_dict"])
    if cfg.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            placement.warn("this model has no gradient checkpointing; flag ignored")
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
    if cfg.freeze:
        freeze_leading_convolutions(model, cfg.freeze)
    if cfg.qat:
        prepare_qat(model)
    model.to(placement.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    ema = ModelEma(model, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and resume_state is not None and resume_state.get("ema_state_dict"):
        ema.module.load_state_dict(resume_state["ema_state_dict"])
        ema.updates = int(resume_state.get("ema_updates", 0))
    train_model: nn.Module = model
    if placement.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[placement.device.index] if placement.device.type == "cuda" else None)
    if placement.is_main:
        print(f"fer-train: {name} {kwargs or ''} {count_parameters(model) / 1e6:.2f}M params | classes "
              f"{data.manifest.classes} | images per class {_counts(data.decoded, len(data.manifest.classes))} | "
              f"device {placement.device} x{placement.world} amp {placement.amp}")
        cost = inference_cost(model, contract.channels, contract.input_size)
        print(f"fer-train: {cost.describe()}")
        if not cost.real_time:
            placement.warn(cost.warning())
    return BuiltModel(model, train_model, ema, contract, name, kwargs, pruned)


def _initial_model(cfg: TrainConfig, data: PreparedData,
                   resume_state: dict | None) -> tuple[nn.Module, str, dict, ModelContract, bool]:
    """The network before the resumed weights: --init's (an ONNX file, BatchNorm refitted on the training images, or a
    checkpoint), else the registry's; its name, kwargs, contract, and whether it is pruned."""
    from_onnx = bool(cfg.init) and is_onnx_init(cfg.init)
    init_state = load_checkpoint(cfg.init) if cfg.init and not from_onnx else None
    pruned = bool((resume_state or init_state or {}).get("pruned"))
    name, kwargs, contract = cfg.arch, parse_arch_args(cfg.arch_arg), data.contract
    if from_onnx and resume_state is not None:  # rebuilt from the run's own checkpoint: the file may have changed since
        spec, contract = resume_state["model"], contract_of(resume_state)
        name, kwargs = spec["name"], dict(spec.get("kwargs", {}))
        model = create_model(name, contract.num_classes, contract.channels, **kwargs)
    elif from_onnx:
        model, init_contract, path = model_from_onnx(cfg.init)
        mapping = _map_classes(model, init_contract, data, cfg.seed)
        spec = init_contract.provenance["model"]
        name, kwargs = spec["name"], dict(spec.get("kwargs", {}))
        init = {"file": path.name, "sha256": file_sha256(path), "classes": mapping}
        contract = init_contract.replace(classes=tuple(data.manifest.classes), crop_margin=contract.crop_margin,
                                         crop_offset=contract.crop_offset, provenance={**contract.provenance, "init": init})
        if "train" in data.tensors:
            refit_batchnorm(model, data.tensors["train"][0], contract)
    elif init_state is not None:
        model, init_contract = model_from_checkpoint(init_state)
        mapping = _map_classes(model, init_contract, data, cfg.seed)
        name, kwargs = init_state["model"]["name"], dict(init_state["model"].get("kwargs", {}))
        contract = init_contract.replace(classes=tuple(data.manifest.classes), crop_margin=contract.crop_margin,
                                         crop_offset=contract.crop_offset,
                                         provenance={**contract.provenance, "init": {"file": cfg.init, "classes": mapping}})
    else:
        pretrained = None if resume_state else cfg.pretrained
        model = create_model(name, contract.num_classes, contract.channels, pretrained=pretrained, **kwargs)
    return model, name, kwargs, contract, pruned


def _map_classes(model: nn.Module, init_contract: ModelContract, data: PreparedData, seed: int) -> str:
    """The --init model's classifier rows onto the data's classes by meaning (``fer_train.head``), once its input is
    checked to be the data's as decoded; what was kept, added and dropped, as printed."""
    took, given = (init_contract.channels, init_contract.input_size), (data.contract.channels, data.contract.input_size)
    if took != given:
        raise CheckpointError(f"--init takes {took[0]}-channel {took[1][0]}x{took[1][1]} input; this run decodes "
                              f"{given[0]}-channel {given[1][0]}x{given[1][1]}: set --channels and --input-size to match")
    rows = class_rows(init_contract.classes, data.manifest.classes)
    remap_classifier(model, init_contract.num_classes, rows, seed)
    mapping = describe_rows(init_contract.classes, data.manifest.classes, rows)
    print(f"fer-train: --init: {mapping}")
    return mapping


def _counts(decoded: dict, num_classes: int) -> dict[str, list[int]]:
    """Images per class of each split as decoded: skipped files are not counted."""
    return {s: np.bincount(d.labels, minlength=num_classes).tolist() for s, d in decoded.items()}
