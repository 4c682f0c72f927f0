"""The fer-export console entry point: in a runtime-only install it says which extra to install."""

from __future__ import annotations

import sys

from fer_train.entry import run_entry


def export() -> None:
    sys.exit(run_entry("fer_export.cli", "fer-export"))
