"""Each option of fer-run and fer-bench is declared once, on its typed config: the options their ``--help`` lists are
the config's fields, plus the few that cannot be fields (named here)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from benchmarks.bench import main as bench_main
from benchmarks.config import BenchConfig
from fer_runtime.cli import main as run_main
from fer_runtime.config import RunConfig
from fer_runtime.options import FerCommand, config_of, config_options, flag_of, option, option_fields

# options that are not config fields: --version is eager (it prints and exits before any config exists), --help is click's
COMMAND_ONLY = {"--version", "--help"}
COMMANDS = {"fer-run": (run_main, RunConfig), "fer-bench": (bench_main, BenchConfig)}


def help_options(command: click.Command) -> set[str]:
    """The options ``--help`` lists: the first long flag of each entry (``-h, --help``, ``--display / --no-display``)."""
    text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    return set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z0-9-]*)", text, re.M))


def declared_options(config: type) -> set[str]:
    return {flag_of(f.name) for f in option_fields(config)} | COMMAND_ONLY


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_lists_exactly_the_config_fields(prog):
    command, config = COMMANDS[prog]
    assert help_options(command) == declared_options(config)


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_shows_its_default(prog):
    """Each field's help entry, as --help prints it, ends in its default (an unset one says what it stands for)."""
    command, config = COMMANDS[prog]
    ctx = click.Context(command)
    entries = {p.name: p.get_help_record(ctx) for p in command.params}
    for f in option_fields(config):
        flags, text = entries[f.name]
        assert flags.startswith(flag_of(f.name)) and "[default: " in text, (flags, text)


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_the_command_builds_its_config_from_the_defaults(prog, monkeypatch):
    """With no option given, the command function receives exactly the config's defaults."""
    command, config = COMMANDS[prog]
    got = []
    monkeypatch.setattr(command, "callback", lambda **options: got.append(config_of(config, options)))
    CliRunner().invoke(command, [])
    assert got == [config()]


def test_an_option_declared_beside_the_config_is_caught():
    """The comparison can fail: an inline click option that is no field shows up, and a field hidden from help too."""

    @dataclass
    class Config:
        level: int = option(3, "how much", bounds=(0, None))
        loud: bool = option(True, "say it")

    @click.command("x", cls=FerCommand)
    @click.option("--extra", default=None)
    @config_options(Config)
    def inline(**options):
        pass

    @click.command("y", cls=FerCommand)
    def bare(**options):
        pass

    assert help_options(inline) - declared_options(Config) == {"--extra"}
    assert declared_options(Config) - help_options(bare) == {"--level", "--loud", "--version"}


def test_ranges_and_switches_come_from_the_field():
    @dataclass
    class Config:
        level: int = option(3, "how much", bounds=(1, None))
        share: float = option(0.5, "a share", bounds=(0, 1, "<"))
        loud: bool = option(True, "say it")
        shown: bool | None = option(None, "a window", none_means="when possible")
        quiet: bool = option(False, "say nothing")

    got = []

    @click.command("x", cls=FerCommand)
    @config_options(Config)
    def command(**options):
        got.append(config_of(Config, options))

    runner = CliRunner()
    assert runner.invoke(command, []).exit_code == 0 and got.pop() == Config()
    assert runner.invoke(command, ["--no-loud", "--no-shown", "--quiet", "--share", "0"]).exit_code == 0
    assert got.pop() == Config(loud=False, shown=False, quiet=True, share=0.0)
    for argv in (["--level", "0"], ["--share", "1"]):
        result = runner.invoke(command, argv)
        assert result.exit_code == 2 and result.output.startswith(f"x: error: Invalid value for '{argv[0]}'"), result.output
