"""Where a stream's helper threads run: the video decoder (with the threads FFmpeg starts as a capture opens), a
camera's reader and the background detection keep off one core, which the frame loop then has to itself.

Spread over both cores of a 2-core CPU, they interrupted the frame loop often enough to set its p95 frame time (issue
48's clips: ``benchmarks/results/helper_cores``). Only helper threads are pinned, never the frame loop, so it still moves
when something else takes its core. Linux only (``sched_setaffinity``); elsewhere, with a single core to use, or with
``FER_HELPER_CORES=all`` in the environment, nothing changes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import cv2

T = TypeVar("T")
OPT_OUT = "FER_HELPER_CORES"  # "all": helper threads may run on every core, the frame loop's too


def usable_cores() -> set[int]:
    """The cores this process may use (its main thread's affinity), or all of them where that cannot be asked."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(os.getpid()))
    return set(range(os.cpu_count() or 1))


def helper_cores() -> set[int] | None:
    """The cores this process may use (its main thread's) but the first, for a stream's helper threads; None where
    there are fewer than two, threads cannot be pinned (not Linux) or ``FER_HELPER_CORES=all``."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "").strip().lower() == "all":
        return None
    allowed = sorted(usable_cores())
    return set(allowed[1:]) if len(allowed) > 1 else None


def keep_off_frame_core(cores: set[int] | None = None) -> None:
    """Pin the calling thread, and the threads it starts from now on (OpenCV's worker pool too, when this thread is the
    first to need it), to ``cores`` (``helper_cores()`` by default). Best effort: where the system refuses (a cpuset
    changed meanwhile, a sandbox), the thread runs where it may."""
    cores = helper_cores() if cores is None else cores
    if cores:
        # OpenCV counts the cores once, from the affinity of the first thread that asks, and sizes its parallel work
        # by it for good (a detection on the frame loop then ran at half speed): ask before this thread is pinned
        cv2.getNumberOfCPUs()
        try:
            os.sched_setaffinity(0, cores)
        except OSError:
            pass


def made_off_frame_core(make: Callable[[], T]) -> T:
    """``make()`` called on a short-lived thread kept off the frame loop's core, so the threads it starts stay off it
    too: FFmpeg starts its decoding threads when a capture opens. Its result is returned, its error raised here. A
    caller interrupted while it waits (Ctrl-C) leaves nothing open: what ``make()`` then returns is released."""
    cores = helper_cores()
    if not cores:
        return make()
    result: list = []
    abandoned = threading.Event()

    def call() -> None:
        try:
            keep_off_frame_core(cores)
            made = make()
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread below
            result.append((False, exc))
            return
        result.append((True, made))
        if abandoned.is_set():
            _release(made)

    thread = threading.Thread(target=call, name="fer-open", daemon=True)
    try:
        thread.start()
        thread.join()
    except BaseException:
        abandoned.set()
        if result and result[0][0]:
            _release(result[0][1])
        raise
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _release(capture) -> None:
    if hasattr(capture, "release"):
        capture.release()
