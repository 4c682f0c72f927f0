"""Each option of the five commands is declared once, on its config field: ``--help`` lists exactly the config's fields,
the command's own flags (what is not config) and ``--help``/``-h``/``--version``; each field's entry shows its default.

fer-run and fer-bench need no torch (this module imports none, so it runs in the runtime-only venv); the parameters of
fer-train, fer-eval and fer-export are skipped without it."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, fields

import click
import pytest
from click.testing import CliRunner

from benchmarks.config import BenchConfig
from fer_export.config import ExportConfig
from fer_runtime.config import RunConfig
from fer_runtime.options import (
    FerCommand,
    config_of,
    config_options,
    defaults_of_field,
    flag_of,
    option,
    option_fields,
    scalar_type,
)
from fer_runtime.serve.config import ServeConfig
from fer_train.config import EvalConfig, TrainConfig

COMMON = {"--help", "-h", "--version"}
# prog -> (its click command as module:attribute, its config, what it takes that is not its config: how this invocation
# runs, never saved as an option of the run)
COMMANDS = {
    "fer-train": ("fer_train.train:command", TrainConfig, {"--config", "--resume", "--stop-after", "--overwrite",
                                                           "--data-report-only"}),
    "fer-eval": ("fer_train.evaluate:command", EvalConfig, set()),
    "fer-export": ("fer_export.cli:command", ExportConfig, set()),
    "fer-run": ("fer_runtime.cli:main", RunConfig, set()),
    "fer-bench": ("benchmarks.bench:main", BenchConfig, set()),
    "fer-serve": ("fer_runtime.serve.cli:main", ServeConfig, set()),
}
NEEDS_TORCH = {"fer-train", "fer-eval", "fer-export"}


def click_command(prog: str) -> click.Command:
    """The click command of ``prog``; skips the test where it needs torch and torch is not installed."""
    if prog in NEEDS_TORCH:
        pytest.importorskip("torch")
    module, _, name = COMMANDS[prog][0].partition(":")
    return getattr(importlib.import_module(module), name)


def help_flags(command: click.Command) -> set[str]:
    """Every flag of the option rows of ``--help`` (aliases and ``--no-x`` included): a row starts at two spaces; its
    wrapped text is indented further."""
    text = CliRunner().invoke(command, ["--help"]).output
    rows = text.split("\nOptions:\n", 1)[1].splitlines()
    flags = set()
    for row in rows:
        if re.match(r"  -", row):
            spec = re.split(r"\s{2,}", row.strip(), maxsplit=1)[0]
            flags |= {word.rstrip(",") for word in spec.split() if word.startswith("-")}
    return flags


def field_flags(f) -> set[str]:
    """The flags a config field declares: ``--x``, and ``--no-x`` for a switch that is on (or undecided) by default."""
    flag = flag_of(f.name)
    switch = scalar_type(f) is bool and defaults_of_field(f) is not False
    return {flag, "--no-" + flag[2:]} if switch else {flag}


def declared_twice(command: click.Command, cls: type, command_only: set[str]) -> list[str]:
    """What breaks "each option declared once": a config field that is no option, a flag in ``--help`` that is neither a
    field nor one of the command's own, a field (or ``--version``) missing from ``--help``."""
    problems = [f"{f.name} has no option(...)" for f in fields(cls) if f not in option_fields(cls)]
    expected = set().union(*map(field_flags, fields(cls))) | command_only | COMMON
    shown = help_flags(command)
    problems += [f"{flag} is declared only in the command" for flag in sorted(shown - expected)]
    problems += [f"{flag} is not in --help" for flag in sorted(expected - shown)]
    return problems


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_lists_the_config_fields_the_command_flags_and_nothing_else(prog):
    _, cls, command_only = COMMANDS[prog]
    assert declared_twice(click_command(prog), cls, command_only) == []


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_shows_its_default(prog):
    """Each field's help entry, as --help prints it, starts with its flag and ends in its default (an unset one says
    what it stands for)."""
    command, cls = click_command(prog), COMMANDS[prog][1]
    records = {p.name: p.get_help_record(click.Context(command)) for p in command.params}
    for f in fields(cls):
        flags, text = records[f.name]
        assert flags.startswith(flag_of(f.name)) and "[default: " in text, (flags, text)
    if cls is TrainConfig:
        flags, text = records["lr"]
        assert (flags, " ".join(text.split())) == (
            "--lr FLOAT", "peak learning rate [default: (1e-3 with adamw, 0.05 with sgd; divided by 3 with --init)]")


@pytest.mark.parametrize("prog", ["fer-bench", "fer-run"])
def test_the_command_builds_its_config_from_the_defaults(prog, monkeypatch):
    """With no option given, the command function receives exactly the config's defaults."""
    command, cls = click_command(prog), COMMANDS[prog][1]
    got = []
    monkeypatch.setattr(command, "callback", lambda **options: got.append(config_of(cls, options)))
    CliRunner().invoke(command, [])
    assert got == [cls()]


def test_the_check_finds_a_field_that_is_no_option_a_flag_declared_only_in_the_command_and_a_missing_flag():
    @dataclass
    class Config:
        size: int = option(3, "a size", bounds=(0, None))
        loud: bool = option(True, "say it")
        hidden: int = field(default=0)

    @click.command("x", cls=FerCommand)
    @config_options(Config)
    @click.option("--extra", is_flag=True)
    def inline(**_):
        pass

    @click.command("y", cls=FerCommand)
    def bare(**_):
        pass

    assert declared_twice(inline, Config, set()) == ["hidden has no option(...)", "--extra is declared only in the command",
                                                     "--hidden is not in --help", "--version is not in --help"]
    missing = [p for p in declared_twice(bare, Config, set()) if p.endswith("is not in --help")]
    assert missing == [f"{flag} is not in --help" for flag in ("--hidden", "--loud", "--no-loud", "--size", "--version")]


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


def test_ranges_and_switches_come_from_the_field():
    @dataclass
    class Config:
        level: int = option(3, "how much", bounds=(1, None))
        share: float = option(0.5, "a share", bounds=(0, 1, "<"))
        rate: float = option(1.0, "a rate")
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
    for argv in (["--level", "0"], ["--share", "1"], ["--share", "nan"], ["--rate", "nan"]):  # nan passes comparisons
        result = runner.invoke(command, argv)
        assert result.exit_code == 2 and result.output.startswith(f"x: error: Invalid value for '{argv[0]}'"), result.output


def test_an_interrupt_that_lands_inside_a_builtin_still_exits_130(capsys):
    # SIGTERM's KeyboardInterrupt raised while os.fspath ran reached fer-export as "SystemError: <built-in function
    # fspath> returned a result with an exception set", caused by the interrupt: a traceback and exit 1
    @click.command("z", cls=FerCommand)
    def interrupted_inside_a_builtin():
        raise SystemError("<built-in function fspath> returned a result with an exception set") from KeyboardInterrupt()

    @click.command("w", cls=FerCommand)
    def broken():
        raise SystemError("a real one")

    assert interrupted_inside_a_builtin.main([], standalone_mode=False) == 130
    assert capsys.readouterr().err.strip() == "z: interrupted"
    with pytest.raises(SystemError, match="a real one"):
        broken.main([], standalone_mode=False)



def test_a_thread_count_no_machine_has_is_one_line_in_every_command():
    from fer_runtime.cli import main as run_main
    from fer_runtime.options import MAX_THREADS

    configs = [RunConfig, BenchConfig, ExportConfig]
    if importlib.util.find_spec("torch") is not None:
        from fer_train.config import EvalConfig, TrainConfig

        configs += [TrainConfig, EvalConfig]
    for config in configs:  # --threads 100000 grew past 16 GB in ONNX Runtime's pool before it ran a frame
        bounds = next(f.metadata["option"].get("bounds") for f in fields(config) if f.name == "threads")
        assert bounds == (0, MAX_THREADS), config
    result = CliRunner().invoke(run_main, ["--threads", "99999999999", "--demo", "--no-display"])
    assert result.exit_code == 2 and "99999999999 is not in the range 0<=x<=256" in result.output
