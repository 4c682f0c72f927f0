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
# Markdown written by hand (README.md, docs/, RESULTS.md, ...): what holds now, not a diary. Generated Markdown is not
# counted: the model card benchmarks/model_card.py writes, and the report.md fer-bench writes beside its results.json.
MARKDOWN_BUDGET = 1050  # 900 before four capabilities (own data, formats, fer-serve, steady real time) came in
README_MAX_LINES = 120
GENERATED_MARKDOWN = {"models/MODEL_CARD.md": "benchmarks/model_card.py"}  # file: the script that writes it
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
    """At most 6 recipes ship (the shipped models, their stage-1 runs and their teachers); experiments and lab scripts
    are not installed."""
    assert len(list((ROOT / "models" / "recipes").iterdir())) <= 6
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


def is_generated(name: str) -> bool:
    """A Markdown file a program writes: the model card (its script present), or a fer-bench ``report.md`` with the
    ``results.json`` it was written from beside it."""
    if name in GENERATED_MARKDOWN:
        return (ROOT / GENERATED_MARKDOWN[name]).is_file()
    path = Path(name)
    return path.name == "report.md" and (ROOT / path.parent / "results.json").is_file()


def markdown_files() -> list[str]:
    """Markdown files tracked or about to be (untracked and not ignored): what a commit would hold."""
    return _git("ls-files", "--cached", "--others", "--exclude-standard", "*.md").stdout.split()


def markdown_lines(names: list[str]) -> dict[str, int]:
    """Lines of each hand-written Markdown file of ``names`` (as ``wc -l`` counts them)."""
    return {n: (ROOT / n).read_text().count("\n") for n in names if not is_generated(n) and (ROOT / n).is_file()}


def over_budget(lines: dict[str, int], budget: int) -> str | None:
    """None within the budget; else the total and each file's lines, longest first."""
    total = sum(lines.values())
    if total <= budget:
        return None
    listing = "\n".join(f"{n:>5} {name}" for name, n in sorted(lines.items(), key=lambda kv: -kv[1]))
    return f"{total} lines of Markdown, budget {budget}:\n{listing}"


def test_hand_written_markdown_fits_the_budget():
    names = markdown_files()
    lines = markdown_lines(names)
    # the count sees what it should: the README, the docs and RESULTS.md, and no bench report
    assert {"README.md", "RESULTS.md"} <= set(lines) and any(n.startswith("docs/") for n in lines)
    assert "models/MODEL_CARD.md" not in lines and not [n for n in lines if n.startswith("benchmarks/results/")]
    assert [n for n in names if n.startswith("benchmarks/results/")], "the bench reports the count leaves out"
    problem = over_budget(lines, MARKDOWN_BUDGET)
    assert problem is None, problem


def test_the_markdown_budget_can_fail():
    assert over_budget({"a.md": 500, "docs/b.md": 400}, 900) is None
    assert over_budget({"a.md": 500, "docs/b.md": 401}, 900).splitlines() == [
        "901 lines of Markdown, budget 900:", "  500 a.md", "  401 docs/b.md"]
    assert not is_generated("docs/bench.md") and not is_generated("benchmarks/results/nowhere/report.md")
    assert is_generated("benchmarks/results/ferplus/report.md") and is_generated("models/MODEL_CARD.md")


def test_the_readme_is_a_two_minute_read():
    """At most README_MAX_LINES lines; the reference lives in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move reference to docs/"


def test_nothing_is_numbered_by_diary_entry_and_no_stale_results_folder():
    found = _git("grep", "-niE", r"\bsessions? [0-9]+").stdout
    assert not found, found
    assert not _git("ls-files", "bench_results").stdout


def test_no_formatter_markers_where_no_formatter_runs():
    """make lint is ruff check alone: a formatter's skip marker would be noise that says a formatter runs."""
    marker = "fmt" + ": skip"  # spelled apart so this file does not match itself
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [f for f in files if (ROOT / f).is_file() and marker in (ROOT / f).read_text()] == []
