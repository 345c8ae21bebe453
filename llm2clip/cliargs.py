"""Argument types shared by the components' command lines, and options generated from config dataclasses.

A config dataclass is the one place its defaults are written: ``add_dataclass_options`` turns its fields into
options (``--field-name``, the field's type, ``--x/--no-x`` for a bool, the default shown in the help), and
``dataclass_values`` reads the parsed values back.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CLI = "cli"  # the field-metadata key of an ``Opt``


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1, with a message that says which rule was broken."""
    n = _int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def non_negative_int(value: str) -> int:
    """argparse type: an integer of at least 0 (a count where 0 means none)."""
    n = _int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return n


def positive_float(value: str) -> float:
    """argparse type: a finite number above 0 (a learning rate, a scale)."""
    x = _float(value)
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number above 0")
    return x


def share(value: str) -> float:
    """argparse type: a number from 0 to 1 (a share of the items)."""
    x = _float(value)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError("must be a number from 0 to 1")
    return x


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


@dataclass(frozen=True)
class Opt:
    """How a config field appears on the command line: its help text, and a parser or choices where the
    field's annotation says too little (a count that must be positive, a string among a few)."""

    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None


def opt(help: str, type: Callable[[str], Any] | None = None, choices: Iterable[str] | None = None) -> dict:
    """Field metadata that makes the field an option: ``x: int = field(default=1, metadata=opt("..."))``."""
    return {CLI: Opt(help, type, tuple(choices) if choices is not None else None)}


def _converter(annotation: Any) -> Callable[[str], Any]:
    """int, float or str from ``int``, ``float | None`` and the like; anything else needs ``Opt.type``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no command-line type for {annotation!r}: give the field an Opt with a type")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, opts: Mapping[str, Opt] | None = None,
                          *, defaults: Any = None, suppress: bool = False) -> list[str]:
    """An option for every field of ``cls`` that has an ``Opt`` (in its metadata, or in ``opts`` by field name,
    for a dataclass that keeps its help elsewhere), in that order; returns the field names.

    The help shows the default of ``defaults`` (an instance; ``cls()`` when None). ``suppress``: an option not
    given leaves no attribute, so that a preset chosen on the same command line fills it in."""
    hints = typing.get_type_hints(cls)
    base = defaults if defaults is not None else cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    chosen = {**{n: f.metadata[CLI] for n, f in fields.items() if CLI in f.metadata}, **(opts or {})}
    for name, o in chosen.items():
        default = getattr(base, name)
        flag = "--" + name.replace("_", "-")
        help_text = o.help if default is None else f"{o.help} (default {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text,
                                  "default": argparse.SUPPRESS if suppress else default}
        if hints[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=o.type or _converter(hints[name]), choices=o.choices)
        parser.add_argument(flag, **kwargs)
    return list(chosen)


def dataclass_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields present in ``args``, for ``cls(**...)`` or ``replace``."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}


def add_command(subparsers: Any, name: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The subcommand ``name`` that ``run`` carries out. ``run``'s docstring is its text: the first paragraph the
    one-line help of the command list, the rest the description of its own ``--help``. The text lives with the
    code it describes, and every command is declared the same way."""
    summary, _, details = inspect.cleandoc(run.__doc__ or name).partition("\n\n")
    summary, details = " ".join(summary.split()), " ".join(details.split())
    # argparse expands %-formats in help texts but not in descriptions
    parser = subparsers.add_parser(name, help=summary, description=(details or summary).replace("%%", "%"))
    parser.set_defaults(func=run)
    return parser
