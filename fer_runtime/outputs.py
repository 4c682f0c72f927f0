"""What the five commands share about their outputs and their command lines.

- Output locations checked before any work starts, so a bad path costs one line, not a traceback after the work;
  files written whole or not at all (``atomic_path``).
- Exit codes: 0 done, 1 internal error, 2 usage or input error (``OutputError`` among them, and an
  output that cannot be written, e.g. a full disk: ``fer_runtime.errors.write_error``), 3 a failed quality gate (fer-export's INT8
  drop), 130 interrupted (Ctrl-C or SIGTERM).
- One help format and one flag grammar (README, "Command grammar").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from fer_runtime.errors import OutputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix, so writers pick the format by it) that becomes ``path`` when
    the block ends cleanly and is removed when it does not: a whole file or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def missing_dirs(path: str | Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, deepest first: what a ``mkdir(parents=True)`` would create."""
    missing = []
    for folder in [Path(path), *Path(path).parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_empty_dirs(folders: list[Path]) -> None:
    """Remove the folders a failed command created, deepest first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def _probe(folder: Path, what: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_output_dir(path: str | Path, what: str = "--out-dir") -> Path:
    """A folder that exists and is writable, or can be made under a writable folder. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise OutputError(f"{what} {path}: {base} is a file, not a folder")
    _probe(base, what, path)
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """A file path whose folder exists and is writable, and that is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{what} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is not a folder")
    _probe(parent, what, path)
    return path


def _version() -> str:
    from fer_runtime import version

    return version()


def version_option(prog: str):
    """``--version`` for the click commands: ``PROG VERSION``, read when asked (importlib.metadata)."""

    def show(ctx: click.Context, _param, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(f"{prog} {_version()}")
            ctx.exit(0)

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="print the fer-toolchain version and exit")  # fmt: skip
