"""The README's command-grammar table is what the five commands accept: one flag per thing, nothing missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from benchmarks.bench import main as bench_main  # noqa: E402
from fer_export.cli import command as export_command  # noqa: E402
from fer_export.cli import main as export_main  # noqa: E402
from fer_runtime.cli import main as run_main  # noqa: E402
from fer_train.evaluate import command as eval_command  # noqa: E402
from fer_train.train import command as train_command  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ["fer-train", "fer-eval", "fer-export", "fer-run", "fer-bench"]


def _help_flags(command: str) -> set[str]:
    clicks = {"fer-train": train_command, "fer-eval": eval_command, "fer-export": export_command, "fer-run": run_main,
              "fer-bench": bench_main}  # fmt: skip
    text = CliRunner().invoke(clicks[command], ["--help"]).output
    # the option list only: a flag at the start of its help entry, or after a comma (aliases, click's --x / --no-x)
    return set(re.findall(r"(?:^|\n)\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", text)) | set(re.findall(r"[,/] (--[a-z][a-z0-9-]*)", text))


def _grammar_table() -> list[tuple[list[str], dict[str, bool]]]:
    lines = README.read_text().split("## Command grammar")[1].splitlines()
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 + len(COMMANDS) and cells[1].startswith("`--"):
            flags = [f.split()[0] for f in re.findall(r"`(--[^`]+)`", cells[1])]
            rows.append((flags, {cmd: cell == "✓" for cmd, cell in zip(COMMANDS, cells[2:])}))
    return rows


def test_the_readme_table_matches_every_command_help():
    rows = _grammar_table()
    assert len(rows) >= 10
    helps = {cmd: _help_flags(cmd) for cmd in COMMANDS}
    for flags, has in rows:
        for flag in flags:
            for cmd, expected in has.items():
                assert (flag in helps[cmd]) == expected, f"{cmd} {'lacks' if expected else 'has'} {flag}"


def test_fer_export_names_the_flag_for_a_positional_source(capsys):
    assert export_main(["runs/r/best.pt", "--int8"]) == 2
    assert capsys.readouterr().err.strip() == ("fer-export: error: name the source with its flag: --ckpt runs/r/best.pt "
                                               "(--ckpt for a checkpoint, --model for an ONNX file)")  # fmt: skip
    assert export_main(["m.onnx"]) == 2 and "--model m.onnx" in capsys.readouterr().err


def _option_entries(help_text: str) -> dict[str, str]:
    """A click --help's option list: each flag (and a short alias) with its whole entry, wrapped lines joined."""
    entries, current = {}, None
    for line in help_text.split("\nOptions:\n", 1)[1].splitlines():
        m = re.match(r"  (?:(-\w), )?(--[a-z][a-z0-9-]*)", line)
        if m:
            current = m.group(2)
            entries[current] = line.strip()
            if m.group(1):
                entries[m.group(1)] = line.strip()
        elif current:
            entries[current] += " " + line.strip()
    return entries


def test_fer_export_help_options_are_the_export_config_fields():
    """One declaration: fer-export's options are ExportConfig's fields, each showing its default, and nothing else."""
    from fer_export.config import ExportConfig
    from fer_runtime.options import flag_of, option_fields

    entries = _option_entries(CliRunner().invoke(export_command, ["--help"], terminal_width=200).output)
    fields = {flag_of(f.name) for f in option_fields(ExportConfig)}
    assert set(entries) == fields | {"--help", "-h", "--version"}
    assert [flag for flag in fields if "[default: " not in entries[flag]] == []


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
            "fer-eval": __import__("fer_train.evaluate", fromlist=["main"]).main}[command]  # fmt: skip
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
