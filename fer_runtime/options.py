"""Command-line options declared once, on the fields of each command's typed config.

``option(default, help, ...)`` makes a dataclass field that is also a command-line option; ``config_options(Config)``
turns every such field into a click option ``--field-name`` with that default, help and choices; ``given_options``
returns the ones the user typed, so that a recipe (``--config``) or a resumed run fills the rest. ``FerCommand`` is
the one place where a ``FerError`` becomes ``PROG: error: MESSAGE`` and its exit code.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from fer_runtime.errors import EXIT_INTERRUPTED, EXIT_USAGE, FerError, os_error, sigterm_as_interrupt

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
# --threads: more than this is a typo (each thread is a pool worker with its own buffers; 100000 took 16 GB here)
MAX_THREADS = 256


class OptionError(FerError):
    """A recipe or option the command does not know, or a value out of range."""


def option(default: Any = None, help: str = "", *, choices: list | tuple | None = None, metavar: str | None = None,
           multiple: bool = False, none_means: str | None = None, bounds: tuple | None = None) -> Any:
    """A config field and its command-line option: default, help, choices, range and repeatability, declared once.

    ``none_means`` says what a ``None`` default becomes ("by --opt"); ``multiple`` makes a list field a repeatable flag;
    ``bounds=(low, high)`` is a number's inclusive range (None: no bound), ``(low, high, "<")`` leaves ``high`` out.
    A bool field is a switch ``--x``; one whose default is on, or ``None`` (decided when the command runs), is
    ``--x/--no-x``.
    """
    meta = {"help": help, "choices": None if choices is None else list(choices), "metavar": metavar,
            "multiple": multiple, "none_means": none_means}
    if bounds is not None:
        meta["bounds"] = tuple(bounds)
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata={"option": meta})
    return field(default=default, metadata={"option": meta})


def option_fields(cls: type) -> list[Field]:
    """The fields of a config dataclass that are command-line options, in declaration order."""
    return [f for f in fields(cls) if "option" in f.metadata]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def scalar_type(f: Field) -> type:
    """The element type of a field annotated ``int``, ``float | None``, ``list[str]`` and the like."""
    text = str(f.type).replace(" ", "").replace("|None", "").replace("Optional[", "")
    if text.startswith("list["):
        text = text[5:-1]
    return _SCALARS.get(text.rstrip("]"), str)


def _click_option(f: Field) -> Callable:
    meta = f.metadata["option"]
    kind = scalar_type(f)
    default = defaults_of_field(f)
    kw: dict[str, Any] = {"help": meta["help"], "show_default": True}
    if kind is bool:
        if default is not False:  # on by default, or decided when the command runs: it can be turned off
            shown = "on" if default else meta["none_means"] or "none"
            return click.option(f"{flag_of(f.name)}/--no-{flag_of(f.name)[2:]}", f.name, default=default, help=meta["help"],
                                show_default=shown)
        kw.update(is_flag=True, default=False, show_default="off")
    else:
        kw["type"] = _value_type(f)
        kw["default"] = tuple(default or ()) if meta["multiple"] else default
        kw["multiple"] = meta["multiple"]
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        if default is None or default == []:
            kw["show_default"] = meta["none_means"] or "none"
    return click.option(flag_of(f.name), f.name, **kw)


def _value_type(f: Field) -> Any:
    """The click type that checks one value of ``f``: its choices, its number type and range, or a plain type."""
    meta, kind = f.metadata["option"], scalar_type(f)
    if kind is bool:
        return click.BOOL
    if meta["choices"]:
        return click.Choice([str(c) for c in meta["choices"]])
    if kind is float and not meta.get("bounds"):
        return Float()
    if not meta.get("bounds") or kind is not int and kind is not float:
        return click.types.convert_type(kind)
    low, high, *below = meta["bounds"]
    return (click.IntRange if kind is int else FloatRange)(low, high, max_open=below == ["<"])


class Float(click.types.FloatParamType):
    """click's float, refusing nan: no option means it, and every range comparison lets it through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number.", param, ctx)
        return number


class FloatRange(click.FloatRange, Float):
    """click's FloatRange, refusing nan too."""


def defaults_of_field(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]


def config_options(cls: type) -> Callable:
    """Decorator: one click option per option field of ``cls``."""

    def decorate(command: Callable) -> Callable:
        for f in reversed(option_fields(cls)):
            command = _click_option(f)(command)
        return command

    return decorate


def as_field_value(f: Field, value: Any) -> Any:
    """A click value as the field holds it: tuples as lists, choices in the field's own type."""
    kind = scalar_type(f)
    if isinstance(value, tuple | list):
        return [kind(v) for v in value]
    return value if value is None or kind is bool else kind(value)


def config_of(cls: type, options: dict[str, Any]) -> Any:
    """The typed config of the options click parsed (``main(**options)``): repeatable options as lists."""
    fields_by_name = {f.name: f for f in option_fields(cls)}
    return cls(**{name: as_field_value(fields_by_name[name], value) for name, value in options.items()})


def given_options(cls: type, ctx: click.Context) -> dict[str, Any]:
    """The options of ``cls`` typed on the command line (or set in the environment), as field values."""
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {f.name: as_field_value(f, ctx.params[f.name]) for f in option_fields(cls)
            if f.name in ctx.params and ctx.get_parameter_source(f.name) in typed}


def json_or_text(text: str) -> Any:
    """A ``KEY=VALUE`` item's value: JSON where it parses (numbers, lists, true/false), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_known(cls: type, options: dict, where: str) -> None:
    unknown = sorted(set(options) - {f.name for f in fields(cls)})
    if unknown:
        raise OptionError(f"{where}: unknown option(s) {', '.join(unknown)}")


def checked_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Values from a recipe, ``--train-option`` or a saved run, checked and converted as the command line would
    (names, choices, numbers, ranges): anything wrong is one ``OptionError`` naming ``where``."""
    check_known(cls, values, where)
    by_name = {f.name: f for f in option_fields(cls)}
    return {name: _checked(by_name[name], value, where) if name in by_name else value for name, value in values.items()}


def _checked(f: Field, value: Any, where: str) -> Any:
    text = str(f.type).replace(" ", "")
    if value is None:
        if "None" not in text:
            raise OptionError(f"{where}: {f.name} needs a value")
        return None
    many = text.startswith("list[")
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) != 1 and not many:
        raise OptionError(f"{where}: {f.name} takes one value, got {value!r}")
    kind = scalar_type(f)
    for v in items:  # what the command line would refuse as text: 30.7 for a count, true for a number, 1 for a switch
        not_int = kind is int and isinstance(v, float) and not v.is_integer()
        if not_int or isinstance(v, bool) != (kind is bool) and not (kind is bool and isinstance(v, str)):
            raise OptionError(f"{where}: {f.name}: {v!r} is not a valid {kind.__name__}")
    try:
        converted = [_value_type(f).convert(v, None, None) for v in items]
    except click.BadParameter as exc:
        raise OptionError(f"{where}: {f.name}: {exc.message}") from None
    return as_field_value(f, converted if many else converted[0])


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; an unreadable or invalid file is one ``OptionError`` line."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise OptionError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{path} is not valid TOML: {exc}") from None


def load_recipe(path: str | Path, cls: type, table: str | None = None, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file: a TOML table of ``cls``'s options, named as its fields (``arch_arg = ["width=0.5"]``), checked
    as the command line checks them.

    ``base = "PATH.toml"`` starts from another recipe and changes only the keys given (an experiment over a shipped recipe).
    """
    path = Path(path)
    data = read_toml(path)
    options = dict(data.get(table, data) if table else data)
    base = options.pop("base", None)
    options = checked_values(cls, options, str(path))
    if base is None:
        return options
    # an experiment names the recipe it changes: relative to its own folder, else to the working directory
    base_path = next((p for p in (path.parent / base, Path(base)) if p.is_file()), path.parent / base)
    seen = (*_seen, path.resolve())
    if base_path.resolve() in seen:
        raise OptionError(f"{path}: its base {base} leads back to itself (" + " -> ".join(p.name for p in seen) + ")")
    return {**load_recipe(base_path, cls, table, seen), **options}


class FerCommand(click.Command):
    """A click command whose usage errors and ``FerError``s are one ``PROG: error: ...`` line and their exit code;
    Ctrl-C and SIGTERM exit 130."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        try:
            with sigterm_as_interrupt():  # SIGTERM ends every command like Ctrl-C: 130, outputs cleaned up
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"{self.name}: error: {exc.format_message()}", err=True)
            code = EXIT_USAGE
        except FerError as exc:
            click.echo(f"{self.name}: error: {exc}", err=True)
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt, SystemError) as exc:
            # a signal's KeyboardInterrupt raised while a builtin ran (os.fspath) comes out as a SystemError caused by it
            if isinstance(exc, SystemError) and not isinstance(exc.__cause__, KeyboardInterrupt):
                raise
            click.echo(f"{self.name}: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except OSError as exc:  # a disk that fills, a folder that vanishes mid-run: one line, not a traceback
            error = os_error(exc)
            click.echo(f"{self.name}: error: {error}", err=True)
            code = error.exit_code  # docs/reference.md: an output that cannot be written exits 2
        if standalone_mode:
            sys.exit(code or 0)
        return code
