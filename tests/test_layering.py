"""The dependency direction of the design sketch (``../shared/DESIGN.md`` beside the checkout, "Dependency direction
between the packages"), checked on the source: which room may import which.

Rooms are the packages and the parts of them that hold one thing: the torch-free runtime (``fer_runtime``) with its
data layer (``fer_runtime.data``), its option declarations (``fer_runtime.options``) and its error base
(``fer_runtime.errors``), and beside it the HTTP service (``fer_runtime.serve``, the serve extra); training
(``fer_train``); export (``fer_export``); the product bench (``benchmarks``, the ``fer-bench`` command and the model
card) apart from the lab scripts (``benchmarks.scripts``); the shipped models
(``fer_models``, the ``models/`` folder). ``python -m tests.test_layering`` prints the import graph between them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package name (models/ installs as fer_models)
PACKAGES = {"fer_runtime": "fer_runtime", "fer_train": "fer_train", "fer_export": "fer_export", "benchmarks": "benchmarks",
            "models": "fer_models"}
# the most specific first
ROOMS = ("fer_runtime.data", "fer_runtime.options", "fer_runtime.errors", "fer_runtime.serve", "fer_runtime", "fer_train",
         "fer_export", "benchmarks.scripts", "benchmarks", "fer_models")
TORCH = {"torch", "timm", "torchvision", "torch_pruning"}

# DESIGN.md's "must never import", anywhere in the room (a function-level import counts too)
FORBIDDEN = {
    "fer_runtime": TORCH | {"fer_train", "fer_export", "benchmarks", "fer_runtime.serve", "starlette", "uvicorn"},
    "fer_train": {"fer_export", "benchmarks"},
    "fer_export": {"benchmarks"},
    # the product bench: fer_train only behind the optional --ckpt row (checked below); never the export or the lab
    "benchmarks": {"fer_export", "benchmarks.scripts"},
    "fer_models": TORCH | {"fer_runtime", "fer_train", "fer_export", "benchmarks"},
    # fer-serve: the runtime behind HTTP (starlette, uvicorn: the serve extra), never training, export or the bench
    "fer_runtime.serve": TORCH | {"fer_train", "fer_export", "benchmarks"},
}
# rooms at the bottom of the runtime, and the only project modules each may import (besides its own)
BELOW = {
    "fer_runtime.errors": set(),
    "fer_runtime.options": {"fer_runtime.errors"},
    # the data layer is what training, export and the bench share: it does not reach up into the frame loop
    "fer_runtime.data": {"fer_runtime.errors", "fer_runtime.contract", "fer_runtime.outputs"},
}
# lab scripts are not the product: they may use the training extra (fer_train, fer_export, torch) that fer-bench does
# not need; nothing but the tests imports them
LAB = "benchmarks.scripts"


def modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def room_of(module: str) -> str | None:
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def imports_of(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at the top level?) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            # "from fer_runtime.data import fer_csv" imports the module fer_runtime.data.fer_csv
            found += [(f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name, id(node) in top) for a in node.names]
    return found


MODULES = modules()


def import_graph(top_level_only: bool = False) -> dict[str, list[str]]:
    """Room -> the rooms it imports (and ``torch`` where it imports the training stack), sorted: the picture of the
    dependency direction. ``top_level_only``: leave out imports inside functions (optional paths such as --ckpt)."""
    graph: dict[str, set[str]] = {room: set() for room in ROOMS}
    for module, path in MODULES.items():
        room = room_of(module)
        for name, at_top in imports_of(module, path):
            if top_level_only and not at_top:
                continue
            target = "torch" if name.split(".")[0] in TORCH else room_of(name)
            if target and target != room:
                graph[room].add(target)
    return {room: sorted(targets) for room, targets in graph.items()}


def format_graph() -> str:
    everywhere, top = import_graph(), import_graph(top_level_only=True)
    lines = []
    for room, targets in everywhere.items():
        shown = [t if t in top[room] else f"({t}, in a function)" for t in targets]
        lines.append(f"{room:<20} -> {', '.join(shown) or '(nothing of the project)'}")
    return "\n".join(lines)


def _reaches(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_what_the_design_allows(room):
    bad = {}
    for module, path in MODULES.items():
        in_the_runtime = module.startswith("fer_runtime.") and room_of(module) != "fer_runtime.serve"
        if room_of(module) != room and not (room == "fer_runtime" and in_the_runtime):
            continue
        found = sorted({n for n, _ in imports_of(module, path) if _reaches(n, FORBIDDEN[room])})
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"{room} imports what ../shared/DESIGN.md forbids: {bad}"


@pytest.mark.parametrize("room", sorted(BELOW))
def test_the_runtime_base_rooms_import_only_what_is_below_them(room):
    bad = {}
    for module, path in MODULES.items():
        if room_of(module) != room:
            continue
        project = {n for n, _ in imports_of(module, path) if room_of(n) and room_of(n) != room}
        found = sorted(n for n in project if n not in BELOW[room])
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"{room} reaches up: {bad}"


def test_the_product_bench_reaches_fer_train_only_behind_the_ckpt_row():
    """fer-bench runs without the training extra: fer_train and torch only inside the function of the --ckpt row."""
    for module, path in MODULES.items():
        if room_of(module) != "benchmarks":
            continue
        top = {n.split(".")[0] for n, at_top in imports_of(module, path) if at_top}
        assert not top & ({"fer_train"} | TORCH), path
        lazy = {n.split(".")[0] for n, at_top in imports_of(module, path) if not at_top}
        if lazy & ({"fer_train"} | TORCH):
            assert module == "benchmarks.bench", path


def test_lab_scripts_are_imported_by_nothing_of_the_product():
    users = [m for m, path in MODULES.items() if room_of(m) != LAB and any(_reaches(n, {LAB}) for n, _ in imports_of(m, path))]
    assert not users


def test_the_graph_shows_every_room_and_can_catch_a_wrong_edge(monkeypatch):
    graph = import_graph()
    print("\n" + format_graph())
    assert set(graph) == set(ROOMS) and "fer_runtime.errors" in graph["fer_runtime.options"]
    assert "fer_train" in graph[LAB] and "torch" not in graph["fer_runtime"]
    # a room that imported training would show up, and the design check would name it
    fake = ROOT / "fer_runtime" / "options.py"
    original = imports_of
    monkeypatch.setitem(globals(), "imports_of", lambda m, p: original(m, p) + ([("torch", True)] if p == fake else []))
    assert "torch" in import_graph()["fer_runtime.options"]
    with pytest.raises(AssertionError, match="options.py"):
        test_rooms_import_only_what_the_design_allows("fer_runtime")


# The module map below the rooms: one module per mechanism. Each mechanism's tell-tale (a call, or a definition) appears
# in its home module and nowhere else in the product, so a second implementation of the same job fails here.
MECHANISMS = {
    "open a model file, by its backend": ("fer_runtime.backends",
                                          r"(?<!class )\b(OnnxModel|IncumbentModel|OpenVinoModel|LiteRtModel)\(", set()),
    "the decision rule": ("fer_runtime.decision",
                          r"\bdef (decision_probabilities|calibrated_probabilities|prior_correction_for)\b", set()),
    "score a model on a split": ("fer_runtime.scoring", r"(?<!def )\bcalibration_summary\(", set()),
    "time models": ("fer_runtime.profiling", r"(?<!def )\btime_interleaved\(", set()),
    "write files and folders whole": ("fer_runtime.outputs", r"\bos\.(replace|rename)\(|\.rename\(|\bmkdtemp\(", set()),
    "defer or convert signals": ("fer_runtime.errors", r"\bsignal\.signal\(", set()),
    "choose the device": ("fer_train.placement", r"\bcuda\.is_available\(", set()),
    "decide whether a run is finished": ("fer_train.run_status", r"""\.get\(["']complete["']""", set()),
}


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_each_mechanism_has_one_module(mechanism):
    import re

    home, pattern, not_yet = MECHANISMS[mechanism]
    assert home in MODULES, home
    found = set()
    for module, path in MODULES.items():
        if module.split(".")[0] in not_yet:
            continue
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        if re.search(pattern, code):
            found.add(module)
    assert found <= {home}, f"{mechanism}: done outside {home} in {sorted(found - {home})}"


def test_one_cli_framework_and_fer_export_stages_apart_from_its_command_line():
    """click is the one CLI framework: no module imports argparse. Only fer_export/cli.py is fer-export's command;
    no stage imports it or click."""
    names = {module: {n for n, _ in imports_of(module, path)} for module, path in MODULES.items()}
    assert not [str(p.relative_to(ROOT)) for m, p in MODULES.items() if "argparse" in names[m]]
    stages = [m for m, p in MODULES.items() if p.parent == ROOT / "fer_export" and p.name not in ("cli.py", "entry.py")]
    assert stages
    for module in stages:
        assert not names[module] & {"click", "fer_export.cli"}, MODULES[module]


if __name__ == "__main__":
    print(format_graph())
