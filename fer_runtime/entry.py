"""Console entry points that name what to install, in one line, when a command's dependency is missing."""

from __future__ import annotations

import importlib
import sys

OPENCV = ("needs OpenCV: pip install 'fer-toolchain[desktop]' (a desktop, with a window) or 'fer-toolchain[headless]' "
          "(a server); one of the two, never both")
RUNTIME_NEEDS = {"cv2": OPENCV,
                 "onnxruntime": "needs ONNX Runtime: pip install 'fer-toolchain[cpu]' (or [gpu] for onnxruntime-gpu)"}


def run_entry(module: str, prog: str, needs: dict[str, str] = RUNTIME_NEEDS, requires: tuple[str, ...] = ()) -> int:
    """Import ``requires`` (what every run of the command needs, even where ``--help`` would not), then ``module``, and
    run its ``main``; a missing top-level module named in ``needs`` is one line and exit 2."""
    try:
        for name in requires:
            importlib.import_module(name)
        target = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in needs:
            raise
        print(f"{prog}: error: {prog} {needs[missing]} (no module {missing!r})", file=sys.stderr)
        return 2
    return target.main()


def fer_run() -> None:
    sys.exit(run_entry("fer_runtime.cli", "fer-run", requires=("cv2",)))


def fer_bench() -> None:
    sys.exit(run_entry("benchmarks.bench", "fer-bench", requires=("cv2",)))


def fer_serve() -> None:
    sys.exit(run_entry("fer_runtime.serve.cli", "fer-serve", requires=("cv2",)))
