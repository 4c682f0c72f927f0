"""Seconds per training step of a registered model in fp32 and bf16 autocast on this CPU.

\b
    python -m benchmarks.scripts.train_step_speed --threads 2 --arch vgg --arch-arg width=0.5

Tells whether ``fer-train --amp bf16`` pays here: on CPUs without native bf16 (no AVX512-BF16
or AMX) it is emulated and many times slower than fp32, which is why ``--amp auto`` checks.
Writes a JSON line per precision to stdout. Needs the ``[train]`` extra.
"""

from __future__ import annotations

import json
import statistics
import time

import click
import torch

from fer_runtime.options import FerCommand
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


@click.command("train_step_speed", cls=FerCommand, help=__doc__)
@click.option("--arch", default="vgg", show_default=True, help="a registered architecture")
@click.option("--arch-arg", multiple=True, metavar="KEY=VALUE", help="architecture option, repeatable  [default: width=0.5]")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--input-size", default=48, show_default=True, type=click.IntRange(min=8))
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=1), help="timed steps (after one warm-up)")
def main(arch: str, arch_arg: tuple[str, ...], threads: int, batch_size: int, input_size: int, steps: int) -> None:
    arch_args = list(arch_arg) or ["width=0.5"]
    torch.set_num_threads(threads)
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        model = create_model(arch, num_classes=7, in_chans=1, **parse_arch_args(arch_args))
        seconds = step_seconds(model, amp, batch_size, input_size, steps)
        click.echo(json.dumps({"precision": "fp32" if amp == "off" else "bf16", "seconds_per_step": round(seconds, 3),
                               "threads": threads, "batch_size": batch_size, "arch": arch, "arch_args": arch_args,
                               "native_bf16": cpu_has_native_bf16()}))


if __name__ == "__main__":
    main()
