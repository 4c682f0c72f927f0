"""Run in a venv made with ``pip install .[cpu]`` and the test tools only (``make test-runtime``, part of CI)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                                reason="only meaningful without the [train] extra (make test-runtime)")


@pytest.mark.parametrize("command", ["fer-train", "fer-eval", "fer-export"])
@pytest.mark.parametrize("args", [["--help"], ["--data-root", "x"]])
def test_training_commands_say_which_extra_to_install(command, args):
    exe = shutil.which(command) or str(__import__("pathlib").Path(sys.executable).with_name(command))
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{command}: error: ") and "pip install 'fer-toolchain[train]'" in lines[0]


@pytest.mark.parametrize("command", ["fer-run", "fer-bench"])
def test_runtime_commands_work_without_torch(command):
    exe = shutil.which(command) or str(__import__("pathlib").Path(sys.executable).with_name(command))
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
