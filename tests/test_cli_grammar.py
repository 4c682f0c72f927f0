"""The command-grammar table of docs/reference.md is what the five commands accept: one flag per thing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from fer_export.cli import command as export_command  # noqa: E402
from fer_export.cli import main as export_main  # noqa: E402
from tests.test_options import click_command, help_flags  # noqa: E402

GRAMMAR_DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
COMMANDS = ["fer-train", "fer-eval", "fer-export", "fer-run", "fer-bench"]


def _grammar_table() -> list[tuple[list[str], dict[str, bool]]]:
    lines = GRAMMAR_DOC.read_text().split("## Command grammar")[1].splitlines()
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 + len(COMMANDS) and cells[1].startswith("`--"):
            flags = [f.split()[0] for f in re.findall(r"`(--[^`]+)`", cells[1])]
            rows.append((flags, {cmd: cell == "✓" for cmd, cell in zip(COMMANDS, cells[2:])}))
    return rows


def test_the_grammar_table_matches_every_command_help():
    rows = _grammar_table()
    assert len(rows) >= 10
    helps = {cmd: help_flags(click_command(cmd)) for cmd in COMMANDS}
    for flags, has in rows:
        for flag in flags:
            for cmd, expected in has.items():
                assert (flag in helps[cmd]) == expected, f"{cmd} {'lacks' if expected else 'has'} {flag}"


def test_fer_export_names_the_flag_for_a_positional_source(capsys):
    assert export_main(["runs/r/best.pt", "--int8"]) == 2
    assert capsys.readouterr().err.strip() == ("fer-export: error: name the source with its flag: --ckpt runs/r/best.pt "
                                               "(--ckpt for a checkpoint, --model for an ONNX file)")
    assert export_main(["m.onnx"]) == 2 and "--model m.onnx" in capsys.readouterr().err


def test_fer_export_flags_default_to_export_config():
    """ExportConfig is the one source of fer-export's defaults: the parsed command line equals the dataclass."""
    from fer_export.cli import parse_config
    from fer_export.config import ExportConfig

    assert parse_config(["--ckpt", "run/best.pt"]) == ExportConfig(ckpt="run/best.pt")
    repeated = parse_config(["--ckpt", "r.pt", "--arch-arg", "width=0.5", "--arch-arg", "pool=2", "--prune", "0.5"])
    assert repeated == ExportConfig(ckpt="r.pt", arch_arg=["width=0.5", "pool=2"], prune=0.5)
    text = " ".join(CliRunner().invoke(export_command, ["--help"]).output.split())
    assert "[default: entropy]" in text and "[default: None]" not in text and "[default: False]" not in text


def test_fer_export_has_version_and_one_line_usage_errors(capsys):
    from fer_runtime import version

    assert export_main(["--version"]) == 0 and capsys.readouterr().out == f"fer-export {version()}\n"
    assert export_main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer-export: error: No such option"), err


@pytest.mark.parametrize("command", ["fer-train", "fer-eval"])
def test_click_commands_have_version_and_one_line_usage_errors(command, capsys):
    from fer_runtime import version

    main = {"fer-train": __import__("fer_train.train", fromlist=["main"]).main,
            "fer-eval": __import__("fer_train.evaluate", fromlist=["main"]).main}[command]
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"{command} {version()}\n"
    assert main(["--ckpt", "x.pt", "--no-such-flag"] if command == "fer-eval" else ["--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{command}: error: No such option '--no-such-flag'"), err
    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith(f"Usage: {command} [OPTIONS]")


def test_fer_eval_without_ckpt_is_one_line(capsys):
    from fer_train.evaluate import main as eval_main

    assert eval_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ckpt" in err[0] and err[0].startswith("fer-eval: error: ")


def test_fer_eval_device_cuda_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    from fer_train.evaluate import main as eval_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_main(["--ckpt", str(tmp_path / "best.pt"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer-eval: error: --device cuda: torch sees no CUDA device"), err
