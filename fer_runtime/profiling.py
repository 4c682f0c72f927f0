"""Timing shared by fer-run --profile, fer-export reports and fer-bench: the one latency timer of models
(``time_models``), interleaved rounds, percentiles and per-stage times."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fer_runtime.model import ModelBackend


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds."""
    if not samples_s:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "n": 0}
    a = np.asarray(samples_s) * 1000.0
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": len(a),
    }


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 10, calls: int = 50,
                     warmup: int = 10) -> dict[str, list[float]]:
    """Time several callables in alternating rounds, so machine load drifts hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for n, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                samples[n].append(time.perf_counter() - t0)
    return samples


def time_models(models: dict[str, ModelBackend], batch: int = 1, rounds: int = 10, calls: int = 50,
                warmup: int = 10) -> dict[str, list[float]]:
    """Seconds per ``run`` call of each model on a batch of ``batch`` random inputs of its own shape (the same seed
    for every model), the models timed interleaved (``time_interleaved``)."""
    fns = {}
    for name, model in models.items():
        c = model.contract
        x = np.random.default_rng(0).normal(size=(batch, c.channels, *c.input_size)).astype(np.float32)
        fns[name] = partial(model.run, x)
    return time_interleaved(fns, rounds, calls, warmup)


class Reservoir:
    """Timing samples of a stage with bounded memory: an exact count and mean, and a uniform random sample of at
    most ``size`` values for the percentiles, however long a camera session runs (reservoir sampling)."""

    def __init__(self, size: int = 10_000, seed: int = 0) -> None:
        self.size, self.count, self.total = size, 0, 0.0
        self.values: list[float] = []
        self._rng = np.random.default_rng(seed)

    def append(self, value: float) -> None:
        self.count += 1
        self.total += value
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = int(self._rng.integers(self.count))
        if slot < self.size:
            self.values[slot] = value

    def __len__(self) -> int:
        return self.count

    def summary(self) -> dict[str, float]:
        stats = percentiles(self.values)
        if self.count:
            stats.update(mean_ms=self.total / self.count * 1000.0, n=self.count)
        return stats


class StageTimer:
    """Accumulates per-stage wall times: ``with timer('detect'): ...``; memory stays bounded (``Reservoir``). Threads
    may time stages on one timer at once (a reservoir's count, sum and slots change together, under a lock)."""

    def __init__(self, size: int = 10_000) -> None:
        self.samples: dict[str, Reservoir] = defaultdict(lambda: Reservoir(size))
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            with self._lock:
                self.samples[stage].append(elapsed)

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {stage: s.summary() for stage, s in self.samples.items()}
