"""What the five commands share about their outputs and their command lines.

- Output locations checked before any work starts, so a bad path costs one line, not a traceback after the work;
  files and folders written whole or not at all, under a temporary name renamed into place (``atomic_path``,
  ``PendingFile`` for a file written over a while, ``atomic_dir``): the one place that renames outputs into place.
- Exit codes: 0 done, 1 internal error, 2 usage or input error (``OutputError`` among them, and an
  output that cannot be written, e.g. a full disk: ``fer_runtime.errors.write_error``), 3 a failed quality gate (fer-export's INT8
  drop), 130 interrupted (Ctrl-C or SIGTERM).
- One help format and one flag grammar (docs/reference.md, "Command grammar").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from fer_runtime.errors import OutputError, signals_deferred


def temporary_name(path: str | Path) -> Path:
    """The hidden name beside ``path`` that a file is written under until it is whole (same suffix, so writers that
    pick the format by it still do)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


class PendingFile:
    """A file written under ``tmp`` over a while (a video, frame by frame) that becomes ``path`` with ``commit`` and
    goes with ``discard``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = temporary_name(self.path)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (``temporary_name``) that becomes ``path`` when the block ends cleanly and is
    removed when it does not: a whole file or nothing."""
    pending = PendingFile(path)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


def atomic_write_npz(path: str | Path, *, compress: bool = False, **arrays) -> None:
    """``arrays`` as one .npz file, whole or not at all. A Ctrl-C or SIGTERM during the write is held until the file is
    whole and then raised: cut inside numpy's zip writer, the zip cannot be closed and the interrupt becomes a
    traceback."""
    save = np.savez_compressed if compress else np.savez
    late: list[int] = []
    try:
        with signals_deferred() as late, atomic_path(path) as tmp, open(tmp, "wb") as f:
            save(f, **arrays)
    finally:
        if late:  # also when the write failed (a full disk): the interrupt is what the user asked for
            raise KeyboardInterrupt


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def staging_dir(path: str | Path) -> Path:
    """The hidden folder beside ``path`` that ``atomic_dir`` writes it in: one fixed name, so work kept there after a
    failure can be found again (``resume``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextmanager
def atomic_dir(path: str | Path, *, merge: bool = False, resume: bool = False,
               keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A folder written whole or not at all: the block writes into a staging folder, which becomes ``path`` when the
    block ends cleanly and is removed when it does not.

    - default: the staging folder is ``staging_dir(path)``, and it replaces ``path`` whole (an existing ``path`` is
      moved aside first and removed after);
    - ``merge``: ``path`` exists and may hold other files (a report folder): the staging folder is made inside it and
      its files are moved into ``path`` one by one, each replacing its namesake; nothing else there changes;
    - ``resume``: a staging folder left by an earlier failure is written on, not started afresh;
    - ``keep``: a failed block leaves the staging folder where ``keep(staging)`` says it holds work to resume.
    """
    path = Path(path)
    if merge:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial", dir=path))
    else:
        staging = staging_dir(path)
        if staging.exists() and not resume:
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        if merge or keep is None or not keep(staging):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not merge:
        _replace_dir(staging, path)
        return
    try:
        for item in sorted(staging.iterdir()):
            os.replace(item, path / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, path: Path) -> None:
    """``staging`` becomes ``path``; an old ``path`` is renamed aside first, so a failure between the two renames
    leaves one of them whole, never a half-removed folder under the final name."""
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    had_old = path.exists()
    if had_old:
        os.replace(path, old)
    try:
        os.replace(staging, path)
    except OSError:
        if had_old:
            os.replace(old, path)  # the previous folder back under its name
        raise
    shutil.rmtree(old, ignore_errors=True)


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
                        help="print the fer-toolchain version and exit")
