"""Seconds per training step of a registered model in fp32 and bf16 autocast on this CPU.

    python benchmarks/train_step_speed.py --threads 2 --arch vgg --arch-arg width=0.5

Tells whether ``fer-train --amp bf16`` pays here: on CPUs without native bf16 (no AVX512-BF16
or AMX) it is emulated and many times slower than fp32, which is why ``--amp auto`` checks.
Writes a JSON line per precision to stdout. Needs the ``[train]`` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fer_train.engine import autocast_context, cpu_has_native_bf16
from fer_train.models import create_model, parse_arch_args


def step_seconds(model: torch.nn.Module, amp: str, batch: int, size: int, steps: int) -> float:
    """Median wall time of one forward + backward + AdamW step, after one warm-up step."""
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 7, (batch,))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast_context(torch.device("cpu"), amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vgg")
    p.add_argument("--arch-arg", action="append", default=None, help="KEY=VALUE (default: width=0.5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=48)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    args.arch_arg = args.arch_arg or ["width=0.5"]
    torch.set_num_threads(args.threads)
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        model = create_model(args.arch, num_classes=7, in_chans=1, **parse_arch_args(args.arch_arg))
        seconds = step_seconds(model, amp, args.batch_size, args.input_size, args.steps)
        print(json.dumps({"precision": "fp32" if amp == "off" else "bf16", "seconds_per_step": round(seconds, 3),
                          "threads": args.threads, "batch_size": args.batch_size, "arch": args.arch,
                          "arch_args": args.arch_arg, "native_bf16": cpu_has_native_bf16()}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
