"""Each fer-train and fer-eval option is declared once, on its config field: ``--help`` lists exactly the config's fields,
the command's own flags (what is not config) and ``--help``/``-h``/``--version``."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fer_runtime.options import config_options, flag_of, option_fields

pytest.importorskip("torch")

from fer_train.config import EvalConfig, TrainConfig  # noqa: E402
from fer_train.evaluate import command as eval_command  # noqa: E402
from fer_train.train import command as train_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"--help", "-h", "--version"}
# what a command takes that is not its config: how this invocation runs, never saved as an option of the run
COMMAND_ONLY = {
    "fer-train": {"--config", "--resume", "--stop-after", "--overwrite", "--data-report-only"},
    "fer-eval": set(),
}
COMMANDS = {"fer-train": (train_command, TrainConfig), "fer-eval": (eval_command, EvalConfig)}


def help_flags(command: click.Command) -> set[str]:
    """The flags of the option rows of ``--help`` (a row starts at two spaces; its wrapped text is indented further)."""
    text = CliRunner().invoke(command, ["--help"]).output
    rows = text.split("\nOptions:\n", 1)[1].splitlines()
    flags = set()
    for row in rows:
        if re.match(r"  -", row):
            spec = re.split(r"\s{2,}", row.strip(), maxsplit=1)[0]
            flags |= {word.rstrip(",") for word in spec.split() if word.startswith("-")}
    return flags


def declared_twice(command: click.Command, cls: type, command_only: set[str]) -> list[str]:
    """What breaks "each option declared once": a config field that is no option, a flag in ``--help`` that is neither a
    field nor one of the command's own, a field missing from ``--help``."""
    problems = [f"{f.name} has no option(...)" for f in fields(cls) if f not in option_fields(cls)]
    expected = {flag_of(f.name) for f in fields(cls)} | command_only | COMMON
    shown = help_flags(command)
    problems += [f"{flag} is declared only in the command" for flag in sorted(shown - expected)]
    problems += [f"{flag} is not in --help" for flag in sorted(expected - shown)]
    return problems


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_lists_the_config_fields_the_command_flags_and_nothing_else(prog):
    command, cls = COMMANDS[prog]
    assert declared_twice(command, cls, COMMAND_ONLY[prog]) == []


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_shows_its_default(prog):
    command, cls = COMMANDS[prog]
    records = {p.name: p.get_help_record(click.Context(command)) for p in command.params}
    for f in fields(cls):
        assert "[default: " in records[f.name][1], f.name
    if cls is TrainConfig:
        assert records["lr"][1].endswith("[default: (1e-3 with adamw, 0.05 with sgd)]")


def test_the_check_finds_a_field_that_is_no_option_and_a_flag_declared_only_in_the_command():
    from dataclasses import dataclass, field

    from fer_runtime.options import option

    @dataclass
    class Config:
        size: int = option(3, "a size")
        hidden: int = field(default=0)

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @config_options(Config)
    @click.option("--extra", is_flag=True)
    def cmd(**_):
        pass

    problems = declared_twice(cmd, Config, set())
    assert "hidden has no option(...)" in problems and "--extra is declared only in the command" in problems
    assert "--hidden is not in --help" in problems and not any("--size" in p for p in problems)


def test_a_list_option_is_a_repeated_flag():
    from fer_runtime.options import given_options

    seen = {}

    @click.command()
    @config_options(TrainConfig)
    @click.pass_context
    def cmd(ctx, **_):
        seen.update(given_options(TrainConfig, ctx))

    argv = ["--teacher", "a.onnx", "--teacher", "b.pt", "--mean", "0.5", "--mean", "0.4", "--mean", "0.3", "--channels", "3"]
    assert CliRunner().invoke(cmd, argv).exit_code == 0
    assert seen == {"teacher": ["a.onnx", "b.pt"], "mean": [0.5, 0.4, 0.3], "channels": 3}
