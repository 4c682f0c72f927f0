"""fer-bench on a fresh clone reproduces models/MODEL_CARD.md's figures for each shipped INT8 file: accuracy, macro-F1
and balanced accuracy on its own test split, and on CK+ (every image, the classes it shares with the set)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.bench import main as bench_main

from .conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
FIGURE = r"(\d\.\d{4})"


def _card_row(name: str, ckplus: bool) -> tuple[float, float, float]:
    """Accuracy, macro-F1 and balanced accuracy of a file's row in the card's test table (the first row naming it),
    or in its CK+ table (whose second column is the image count)."""
    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    if ckplus:
        card = card.split("## Faces from another set: CK+", 1)[1]
    images = r" \d+ \|" if ckplus else ""
    match = re.search(rf"^\| {re.escape(name)} \|{images} {FIGURE} \| {FIGURE} \| {FIGURE} \|", card, re.MULTILINE)
    assert match, f"no {'CK+ ' if ckplus else ''}row for {name} in models/MODEL_CARD.md"
    return tuple(float(g) for g in match.groups())


@pytest.mark.parametrize("key", ["ferplus", "fer2013"])
@pytest.mark.parametrize("data_set", ["own", "ckplus"])
def test_fer_bench_reproduces_the_model_card(key, data_set, tmp_path):
    data = SHARED / "data" / (key if data_set == "own" else "ckplus")
    if not data.is_dir():
        pytest.skip(f"needs {data}")
    model = ROOT / "models" / f"{key}.int8.onnx"
    split = ["--protocol", key, "--split", "test"] if data_set == "own" else ["--split", "all"]
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(data), *split, "--no-incumbent",
                                             "--calls", "1", "--no-progress", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    q = json.loads((tmp_path / "results.json").read_text())["models"][model.name]["quality"]
    measured = tuple(round(q[k], 4) for k in ("accuracy", "macro_f1", "balanced_accuracy"))
    assert measured == _card_row(model.name, data_set == "ckplus")
