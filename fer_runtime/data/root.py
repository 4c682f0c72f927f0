"""Where the data is: the one place that reads ``FER_DATA_ROOT``."""

from __future__ import annotations

import os

from fer_runtime.errors import DataError


def resolve_data_root(given: str | None, manifest_root: str | None = None) -> str:
    """``--data-root``, then ``FER_DATA_ROOT``, then the root a run's manifest was made from."""
    root = given or os.environ.get("FER_DATA_ROOT") or manifest_root
    if not root:
        raise DataError("no data: pass --data-root ROOT (or set FER_DATA_ROOT)")
    return root
