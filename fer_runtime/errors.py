"""The one error base of every command: a subclass names what went wrong, and its exit code.

Each command's entry point catches ``FerError`` in one place (``fer_runtime.options.FerCommand``) and prints
``PROG: error: MESSAGE``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_INTERNAL, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 1, 2, 3, 130


class FerError(Exception):
    """A problem the user can fix: bad input, a missing file, an unwritable folder."""

    exit_code = EXIT_USAGE


class GateError(FerError):
    """A check the user asked for failed (an accuracy gate, an export parity check)."""

    exit_code = EXIT_GATE


class DataError(FerError, ValueError):
    """The data root cannot be used as given."""
