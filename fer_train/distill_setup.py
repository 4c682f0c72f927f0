"""Knowledge distillation for a run: the --teacher models checked against the data and the student, their targets
(online, scored once, or read from --teacher-targets-file) as part of the loss, and the targets kept with the run."""

from __future__ import annotations

import time
from pathlib import Path

from fer_runtime.contract import ModelContract
from fer_runtime.data import default_cache_dir
from fer_runtime.options import OptionError
from fer_train.config import TrainConfig
from fer_train.data_prep import PreparedData
from fer_train.engine import Distillation
from fer_train.placement import Placement
from fer_train.teacher import (
    LoadedTeacher,
    check_teachers,
    load_targets,
    load_teacher,
    make_teacher,
    save_targets,
    stored_teacher_targets,
    teacher_paths,
)


def load_teachers(cfg: TrainConfig, data: PreparedData, placement: Placement) -> list[LoadedTeacher]:
    """The --teacher models, checked against the data's classes and the student's input."""
    teachers = [load_teacher(p, placement.device, cfg.threads) for p in teacher_paths(cfg.teacher)]
    if teachers and cfg.teacher_targets_file:
        raise OptionError("give --teacher or --teacher-targets-file, not both")
    check_teachers(teachers, data.manifest.classes, data.contract.channels, data.contract.input_size)
    cached = cfg.teacher_targets_file or teachers and cfg.teacher_targets == "cached"
    if cached and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise OptionError("stored teacher targets cannot follow mixup/cutmix batches: use --teacher-targets online")
    return teachers


def make_distillation(cfg: TrainConfig, teachers: list[LoadedTeacher], data: PreparedData, contract: ModelContract,
                      placement: Placement) -> Distillation | None:
    """Teachers as part of the loss: called on each batch (online), their targets scored once (cached), or read from
    --teacher-targets-file."""
    if not (teachers or cfg.teacher_targets_file) or "train" not in data.decoded:
        return None
    if cfg.teacher_targets_file:
        targets, who = load_targets(cfg.teacher_targets_file, data.decoded["train"].images, data.manifest.classes)
        if placement.is_main:
            print(f"fer-train: distilling from {cfg.teacher_targets_file} ({who})")
        return Distillation(cfg.kd_alpha, cfg.kd_temperature, targets=targets)
    if cfg.teacher_targets == "online":
        return Distillation(cfg.kd_alpha, cfg.kd_temperature, teacher=make_teacher(teachers, contract, placement.device,
                                                                                   cfg.teacher_tta))
    started = time.perf_counter()
    targets, stored = stored_teacher_targets(teachers, data.decoded["train"].images, placement.device, cfg.teacher_tta,
                                             Path(cfg.cache_dir or default_cache_dir()))
    if placement.is_main:
        agree = (targets.argmax(1) == data.tensors["train"][1]).float().mean().item()
        how = f"read from {stored}" if stored else f"{time.perf_counter() - started:.0f}s"
        print(f"fer-train: {len(teachers)} teacher(s) scored the {len(targets)} training images once (tta "
              f"{cfg.teacher_tta}, {how}); their top class matches the label for {agree:.1%}")
    return Distillation(cfg.kd_alpha, cfg.kd_temperature, targets=targets)


def keep_teacher_targets(run_dir: Path, cfg: TrainConfig, teachers: list[LoadedTeacher], distill: Distillation | None,
                         data: PreparedData) -> None:
    """The teachers' stored targets as the run's teacher_targets.npz: a file that travels without the teachers
    (--teacher-targets-file)."""
    if teachers and distill is not None and distill.targets is not None:
        save_targets(run_dir / "teacher_targets.npz", distill.targets, data.decoded["train"].images,
                     data.manifest.classes, [t.path for t in teachers], cfg.teacher_tta)
