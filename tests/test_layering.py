"""The dependency direction of DESIGN.md, checked on the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "fer_runtime": {"torch", "timm", "torchvision", "fer_train", "fer_export", "benchmarks"},
    "fer_train": {"fer_export", "benchmarks"},
    "fer_export": {"benchmarks"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_design_allows(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        found = _imports(path) & FORBIDDEN[package]
        if found:
            bad[str(path.relative_to(ROOT))] = sorted(found)
    assert not bad, f"{package} imports what DESIGN.md forbids: {bad}"


# scripts that need the training extra by their nature: one times training steps, one builds and exports candidates
TRAINING_BENCHMARKS = {"train_step_speed.py", "student_front.py"}  # moved to benchmarks/scripts/ (rewritten below)


def test_benchmarks_reach_fer_train_only_behind_the_torch_row():
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        if path.name in TRAINING_BENCHMARKS:
            continue
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        names |= {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        assert not names & {"fer_train", "fer_export", "torch"}, path
