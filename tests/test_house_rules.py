"""House rules that keep the code and the docs small enough to read: checked on the source, so they cannot drift."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fer_runtime.options import load_recipe
from fer_train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# Markdown beside README.md and the generated model card: what holds now, not a diary
MARKDOWN_BUDGET = 600
MARKDOWN_EXEMPT = {"README.md", "models/MODEL_CARD.md"}
# the packages held to the size rules
SIZED_PACKAGES = ("fer_runtime", "fer_train", "fer_export", "benchmarks")


def oversized_functions(source: str, where: str) -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines or MAX_PARAMETERS parameters (every kind counted, self included);
    click entry points (a ``@click.command``) aside."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if any("command" in ast.unparse(d) for d in node.decorator_list):
            continue
        a = node.args
        params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES or params > MAX_PARAMETERS:
            found.append(f"{where}:{node.lineno} {node.name}: {lines} lines, {params} parameters")
    return found


@pytest.mark.parametrize("package", SIZED_PACKAGES)
def test_no_function_over_60_lines_or_8_parameters(package):
    paths = sorted((ROOT / package).rglob("*.py"))
    found = [f for path in paths for f in oversized_functions(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "split these into named steps:\n" + "\n".join(found)


def test_the_size_rule_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    source = f"def long():\n{body}\n\n\ndef wide(a, b, c, d, e, f, g, h, *, i):\n    pass\n"
    assert oversized_functions(source, "x.py") == ["x.py:1 long: 61 lines, 0 parameters", "x.py:64 wide: 2 lines, 9 parameters"]


def test_experiments_are_small_overrides_of_a_shipped_recipe():
    """benchmarks/experiments/*.toml name their base recipe and hold only what differs; each resolves to a TrainConfig."""
    recipes = ROOT / "models" / "recipes"
    experiments = sorted((ROOT / "benchmarks" / "experiments").glob("*.toml"))
    assert experiments
    for path in experiments:
        own = tomllib.loads(path.read_text())
        base = (path.parent / own.pop("base")).resolve()
        assert base.parent == recipes.resolve() and base.is_file(), path
        shipped = load_recipe(base, TrainConfig)
        assert all(shipped.get(k) != v for k, v in own.items()), f"{path.name} repeats its base"
        assert load_recipe(path, TrainConfig) == {**shipped, **own}
        TrainConfig(**load_recipe(path, TrainConfig))


def test_only_the_shipped_recipes_are_package_data():
    """At most 4 recipes ship (the shipped models and their teachers); experiments and lab scripts are not installed."""
    assert len(list((ROOT / "models" / "recipes").iterdir())) <= 4
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not [p for p in setuptools["packages"] if p.startswith("benchmarks.")]
    toml_data = {pkg: globs for pkg, globs in setuptools["package-data"].items() if any("toml" in g for g in globs)}
    assert toml_data == {"fer_models.recipes": ["*.toml"]} and setuptools["package-dir"]["fer_models"] == "models"
    assert not setuptools.get("include-package-data", True) or not (ROOT / "MANIFEST.in").exists()


def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if done.returncode not in (0, 1) or "not a git repository" in done.stderr:
        pytest.skip("not a git checkout")
    return done


def markdown_lines() -> dict[str, int]:
    """Lines of each tracked Markdown file outside README.md and the model card (as ``wc -l`` counts them)."""
    names = _git("ls-files", "*.md").stdout.split()
    return {n: (ROOT / n).read_text().count("\n") for n in names if n not in MARKDOWN_EXEMPT and (ROOT / n).is_file()}


def test_markdown_outside_readme_and_model_card_fits_the_budget():
    lines = markdown_lines()
    assert "RESULTS.md" in lines and lines["RESULTS.md"] > 0  # the count sees the files it should
    listing = "\n".join(f"{n:>5} {name}" for name, n in sorted(lines.items(), key=lambda kv: -kv[1]))
    total = sum(lines.values())
    assert total <= MARKDOWN_BUDGET, f"{total} lines of Markdown, budget {MARKDOWN_BUDGET}:\n{listing}"


def test_nothing_is_numbered_by_diary_entry_and_no_stale_results_folder():
    found = _git("grep", "-niE", r"\bsessions? [0-9]+").stdout
    assert not found, found
    assert not _git("ls-files", "bench_results").stdout
