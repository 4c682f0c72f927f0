"""Where a process trains or scores: the device (the one ``--device`` rule, fer-eval's too), its rank among DDP
processes, the precision, the seeds; and what it prints (warnings and progress bars from rank 0 only)."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from fer_runtime.options import OptionError
from fer_train.config import TrainConfig
from fer_train.engine import cpu_has_native_bf16, resolve_amp


def choose_device(requested: str, cuda_index: int | None = None) -> torch.device:
    """``--device``: auto takes CUDA where torch sees it, else the CPU; cuda without it is an error, not a silent CPU
    run."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda: torch sees no CUDA device here (a CPU build of torch, no driver, or no GPU "
                          "visible); --device auto or cpu runs on the CPU")
    if requested != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", cuda_index)
    return torch.device("cpu")


@dataclass
class Placement:
    """Where this process trains: its rank among ``world`` processes, the device and the precision."""

    rank: int
    world: int
    device: torch.device
    amp: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def warn(self, message: str) -> None:
        if self.is_main:
            print(f"fer-train: warning: {message}", file=sys.stderr)


def place_process(cfg: TrainConfig) -> Placement:
    """This process's device (its local GPU under torchrun), the DDP group, threads, precision and seeds."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = choose_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    placement = Placement(rank, world, device, resolve_amp(cfg.amp, device))
    if placement.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        placement.warn("this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast is emulated and about 10x slower "
                       "than fp32 (--amp off)")
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return placement


def progress_wanted(no_progress: bool) -> bool:
    """Progress bars only on a terminal: redirected into a log, tqdm's redraws are noise."""
    return not no_progress and sys.stderr.isatty()
