"""Whether a run folder is new, started or finished: the one rule that fer-train, fer-export and ``make models`` follow.

A run is finished when its ``metrics.json`` says ``"complete": true``. fer-train writes that file at the end of each
sitting; ``complete`` is false when ``--stop-after`` ended the sitting early. A run is started when it has a
``last.pt`` to resume from.

``python -m fer_train.run_status RUN`` prints ``new``, ``started`` or ``finished``. It needs no torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def finished(run_dir: Path | None, planned: int | None = None, epoch: int | None = None) -> bool:
    """What the run's metrics.json says, when it was written for ``planned`` epochs if given: a run resumed with a
    larger --epochs is not finished. Without such a file, whether ``epoch`` (the last one trained) reached ``planned``."""
    metrics = Path(run_dir) / "metrics.json" if run_dir is not None else None
    if metrics is not None and metrics.is_file():
        saved = json.loads(metrics.read_text())
        if planned is None or saved.get("epochs") == planned:
            return bool(saved.get("complete", False))
    return epoch is not None and planned is not None and epoch >= planned


def run_status(run_dir: Path) -> str:
    """``finished``, ``started`` (a last.pt to resume from) or ``new``."""
    if finished(run_dir):
        return "finished"
    return "started" if (Path(run_dir) / "last.pt").exists() else "new"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fer_train.run_status RUN", file=sys.stderr)
        return 2
    print(run_status(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
