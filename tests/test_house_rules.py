"""House rules that keep the code and the docs small enough to read: checked on the source, so they cannot drift."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# the packages held to the size rules (the others join as they are converted)
SIZED_PACKAGES = ("fer_runtime", "benchmarks")


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
