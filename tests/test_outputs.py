"""Every command against bad output locations, existing run names, and failures at start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from benchmarks.bench import main as bench_main  # noqa: E402
from fer_export.cli import main as export_main  # noqa: E402
from fer_runtime.cli import main as run_main  # noqa: E402
from fer_train.evaluate import main as eval_main  # noqa: E402
from fer_train.train import main as train_main  # noqa: E402


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder nothing can be written in: chmod for a normal user; /proc for root, who ignores modes."""
    if os.geteuid() == 0:
        return Path("/proc/self")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.fixture(scope="module")
def setup(tree_factory, tmp_path_factory):
    root = tree_factory("train-val-test", per_class=8)
    runs = tmp_path_factory.mktemp("runs")
    assert train_main(["--data-root", str(root), "--out-dir", str(runs), "--name", "r", "--arch", "vgg", "--arch-arg",
                       "width=0.125", "--epochs", "1", "--batch-size", "8", "--no-progress", "--amp", "off",
                       "--threads", "1"]) == 0
    assert export_main(["--ckpt", str(runs / "r" / "best.pt"), "--out-dir", str(runs), "--name", "e"]) == 0
    image = next((root / "test" / "happy").iterdir())
    return {"root": root, "ckpt": runs / "r" / "best.pt", "onnx": runs / "e" / "model.onnx", "image": image}


def _bad_dirs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    return {"read-only": _read_only_dir(tmp_path) / "out", "a file": a_file, "under a file": a_file / "out"}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a_dir").mkdir(exist_ok=True)
    return {"read-only": _read_only_dir(tmp_path) / "o.jsonl", "missing parent": tmp_path / "no" / "such" / "o.jsonl",
            "a folder": tmp_path / "a_dir"}


def _command_lines(main, argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _click_command(main, argv, capsys) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output.strip().splitlines()


def _assert_one_error(code, lines, prog, where):
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert code == 2 and len(errors) == 1 and str(where) in errors[0], (prog, where, lines)
    assert not any("Traceback" in line for line in lines)


def test_every_command_refuses_a_bad_output_folder_before_any_work(setup, tmp_path, capsys):
    for kind, where in _bad_dirs(tmp_path).items():
        before = sorted(tmp_path.rglob("*"))
        common = ["--data-root", str(setup["root"])]
        cases = [
            ("fer-train", _command_lines, train_main, [*common, "--out-dir", str(where), "--epochs", "1", "--no-progress"]),
            ("fer-eval", _command_lines, eval_main, ["--ckpt", str(setup["ckpt"]), "--out-dir", str(where)]),
            ("fer-export", _command_lines, export_main, ["--ckpt", str(setup["ckpt"]), "--out-dir", str(where)]),
            ("fer-bench", _click_command, bench_main, ["--model", str(setup["onnx"]), *common, "--out-dir", str(where),
                                                       "--no-incumbent", "--calls", "1"]),
        ]
        for prog, invoke, main, argv in cases:
            code, lines = invoke(main, argv, capsys)
            _assert_one_error(code, lines, prog, where)
        assert sorted(tmp_path.rglob("*")) == before, kind  # nothing written


def test_every_command_refuses_a_bad_output_file_before_any_work(setup, tmp_path, capsys):
    for kind, where in _bad_files(tmp_path).items():
        before = sorted(tmp_path.rglob("*"))
        cases = [
            ("fer-run", ["--source", str(setup["image"]), "--model", str(setup["onnx"]), "--no-display", "--json", str(where)]),
            ("fer-run", ["--source", str(setup["image"]), "--model", str(setup["onnx"]), "--no-display", "--save", str(where)]),
            ("fer-bench", ["--model", str(setup["onnx"]), "--data-root", str(setup["root"]), "--out-dir",
                           str(tmp_path / "bench"), "--predictions", str(where), "--no-incumbent"]),
        ]
        for prog, argv in cases:
            code, lines = _click_command(run_main if prog == "fer-run" else bench_main, argv, capsys)
            _assert_one_error(code, lines, prog, where)
        assert sorted(tmp_path.rglob("*")) == before, kind


def test_an_existing_run_or_export_name_is_refused_unless_overwrite(setup, tmp_path, capsys):
    ckpt = setup["ckpt"]
    runs = ckpt.parent.parent
    stamp = ckpt.stat().st_mtime_ns
    code, lines = _command_lines(train_main, ["--data-root", str(setup["root"]), "--out-dir", str(runs), "--name", "r",
                                                 "--epochs", "1", "--no-progress"], capsys)
    assert code == 2 and lines == [f"fer-train: error: {runs / 'r'} already holds a run: pick another --name, continue it "
                                   f"with --resume {runs / 'r' / 'last.pt'}, or replace it with --overwrite"]
    assert ckpt.stat().st_mtime_ns == stamp
    code, lines = _command_lines(export_main, ["--ckpt", str(ckpt), "--out-dir", str(runs), "--name", "e"], capsys)
    assert code == 2 and lines == [f"fer-export: error: {runs / 'e'} already exists: pick another --name or replace it "
                                   "with --overwrite"]
    assert export_main(["--ckpt", str(ckpt), "--out-dir", str(tmp_path), "--name", "e2"]) == 0
    assert export_main(["--ckpt", str(ckpt), "--out-dir", str(tmp_path), "--name", "e2", "--overwrite"]) == 0
    report = (tmp_path / "e2" / "export_report.json").read_text()
    assert ".partial" not in report and str(tmp_path / "e2" / "model.onnx") in report


@pytest.mark.parametrize("bad", [["--arch", "no_such_model"], ["--arch-arg", "width"], ["--arch-arg", "nonsense=1"],
                                 ["--init", "missing.pt"]])
def test_a_run_that_fails_at_start_leaves_no_folder(setup, tmp_path, capsys, bad):
    code, lines = _command_lines(train_main, ["--data-root", str(setup["root"]), "--out-dir", str(tmp_path), "--name",
                                                 "x", "--epochs", "1", "--no-progress", *bad], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fer-train: error: "), lines
    assert not (tmp_path / "x").exists()


def test_numeric_options_out_of_range_are_usage_errors(setup, capsys):
    for option, value in (("--max-frames", "-5"), ("--detect-width", "0"), ("--threads", "-3"), ("--camera", "-1")):
        code, lines = _click_command(run_main, ["--source", str(setup["image"]), "--model", str(setup["onnx"]),
                                                "--no-display", option, value], capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("fer-run: error: ") and option in lines[0], lines


def test_bench_torch_row_with_a_non_checkpoint_is_one_line(setup, tmp_path, capsys):
    bad = tmp_path / "notckpt.pt"
    bad.write_text("hello")
    code, lines = _click_command(bench_main, ["--model", str(setup["onnx"]), "--data-root", str(setup["root"]), "--out-dir",
                                              str(tmp_path / "b"), "--ckpt", str(bad), "--no-incumbent", "--calls", "1"],
                                 capsys)
    _assert_one_error(code, lines, "fer-bench", bad)


def test_an_interrupt_in_the_first_epoch_says_there_is_nothing_to_resume(setup, tmp_path, capsys, monkeypatch):
    import fer_train.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    code, lines = _command_lines(train_main, ["--data-root", str(setup["root"]), "--out-dir", str(tmp_path), "--name",
                                                 "i", "--epochs", "1", "--no-progress", "--arch-arg", "width=0.125"],
                                    capsys)
    assert code == 130 and lines[-1] == "fer-train: interrupted before the first epoch finished; nothing to resume"


def test_an_errors_first_line_is_one_that_says_something():
    from fer_runtime.errors import first_line

    stacked = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nException from model_reader.cpp:148:\n"
                           "Unable to read the model: \"m.xml\"\n\n")
    assert first_line(stacked) == 'Unable to read the model: "m.xml"'
    assert first_line(ValueError("one line\nand a graph")) == "one line" and first_line(KeyError()) == "KeyError"
