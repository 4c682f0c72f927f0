"""The one error base of every command: a subclass names what went wrong, and its exit code.

Each command's entry point catches ``FerError`` in one place (``fer_runtime.options.FerCommand``) and prints
``PROG: error: MESSAGE``; anything else is a bug and keeps its traceback. An interrupt's exit code (130) comes from the
two signal guards here: ``sigterm_as_interrupt`` (SIGTERM ends work like Ctrl-C) and ``signals_deferred`` (neither
cuts short the finalising of outputs).
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_INTERNAL, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 1, 2, 3, 130


def first_line(exc: BaseException, limit: int = 200) -> str:
    """What an exception says, in one line for the user: its first line that says something (not a bare "Exception
    from core.cpp:84:" location, as OpenVINO stacks them), cut at ``limit`` characters (converters and runtimes put
    whole graphs in their messages), or its type where it says nothing."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.endswith(":")] or lines
    return (said[0] if said else type(exc).__name__)[:limit]


class FerError(Exception):
    """A problem the user can fix: bad input, a missing file, an unwritable folder."""

    exit_code = EXIT_USAGE


class GateError(FerError):
    """A check the user asked for failed (an accuracy gate, an export parity check)."""

    exit_code = EXIT_GATE


class DataError(FerError, ValueError):
    """The data root cannot be used as given."""


class OutputError(FerError, ValueError):
    """An output location that cannot be written."""


def write_error(exc: OSError, path: str | Path | None = None) -> OutputError:
    """An OSError while writing (a full disk, a vanished folder) as one line naming the file."""
    where = path or exc.filename or "an output"
    return OutputError(f"cannot write {where}: {exc.strerror or exc}")


# errors that only a write gives
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def os_error(exc: OSError) -> FerError:
    """An OSError that reached a command as one line: a full disk or read-only folder is an output that could not be
    written; anything else (a missing or unreadable input) names its file and the reason."""
    if exc.errno in WRITE_ERRNOS:
        return write_error(exc)
    return FerError(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (a scheduler's stop, ``kill``) ends it like Ctrl-C: a ``KeyboardInterrupt``, so
    outputs are finalised and the exit code is 130 alike. Only the main thread can set a signal handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """While the block runs, SIGINT and SIGTERM do not cut it short: each one that arrives is noted in the yielded list,
    for the caller to act on afterwards (finalising outputs, printing the summary). Only the main thread can set a
    signal handler: elsewhere the block runs as is."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(s, handler)
