"""fer-bench on a fresh clone reproduces models/MODEL_CARD.md's accuracy and macro-F1 for each shipped INT8 file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.bench import main as bench_main

from .conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]


def _card_row(name: str) -> tuple[float, float]:
    """Accuracy and macro-F1 of a file's row in the card's test table (the first table row naming it)."""
    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    match = re.search(rf"^\| {re.escape(name)} \| (\d\.\d{{4}}) \| (\d\.\d{{4}}) \|", card, re.MULTILINE)
    assert match, f"no row for {name} in models/MODEL_CARD.md"
    return float(match.group(1)), float(match.group(2))


@pytest.mark.parametrize("key", ["ferplus", "fer2013"])
def test_fer_bench_reproduces_the_model_card(key, tmp_path):
    data = SHARED / "data" / key
    if not data.is_dir():
        pytest.skip(f"needs {data}")
    model = ROOT / "models" / f"{key}.int8.onnx"
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(data), "--protocol", key,
                                             "--split", "test", "--no-incumbent", "--calls", "1", "--no-progress",
                                             "--out-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    quality = json.loads((tmp_path / "results.json").read_text())["models"][model.name]["quality"]
    assert (round(quality["accuracy"], 4), round(quality["macro_f1"], 4)) == _card_row(model.name)
