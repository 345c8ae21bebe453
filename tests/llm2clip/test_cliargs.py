"""Options generated from config dataclasses: names, types, defaults, booleans and presets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from llm2clip.cliargs import (
    Opt,
    add_command,
    add_dataclass_options,
    dataclass_values,
    non_negative_int,
    opt,
    positive_int,
    share,
)


@dataclass
class Cfg:
    steps: int = field(default=10, metadata=opt("optimizer steps", positive_int))
    lr: float | None = field(default=None, metadata=opt("learning rate (default: derived)"))
    mode: str = field(default="a", metadata=opt("mode", choices=("a", "b")))
    bf16: bool = field(default=True, metadata=opt("bf16 autocast"))
    hidden: int = 3  # no Opt: not an option


@dataclass
class Plain:
    warmup: int = 0
    name: str = "x"


def parser_for(cls, opts=None, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_dataclass_options(p, cls, opts, **kw)
    return p


def test_fields_become_typed_options_with_the_dataclass_defaults():
    p = parser_for(Cfg)
    assert Cfg(**dataclass_values(p.parse_args([]), Cfg)) == Cfg()
    args = p.parse_args(["--steps", "3", "--lr", "0.5", "--mode", "b", "--no-bf16"])
    assert Cfg(**dataclass_values(args, Cfg)) == Cfg(steps=3, lr=0.5, mode="b", bf16=False)
    assert "--hidden" not in p.format_help()
    text = " ".join(p.format_help().split())
    assert "optimizer steps (default 10)" in text and "bf16 autocast (default on)" in text
    assert "learning rate (default: derived)" in text and "(default None)" not in text


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "must be at least 1"), (["--steps", "x"], "is not an integer"),
    (["--mode", "c"], "invalid choice"),
])
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parser_for(Cfg).parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_help_kept_apart_from_the_dataclass():
    p = parser_for(Plain, {"name": Opt("a name"), "warmup": Opt("warmup steps", non_negative_int)})
    assert dataclass_values(p.parse_args(["--warmup", "0"]), Plain) == {"name": "x", "warmup": 0}
    with pytest.raises(SystemExit):
        p.parse_args(["--warmup", "-1"])
    # the order of the options is the mapping's
    assert p.format_help().index("--name") < p.format_help().index("--warmup")


def test_suppressed_defaults_leave_only_what_was_given():
    p = parser_for(Cfg, suppress=True, defaults=Cfg(steps=99))
    assert dataclass_values(p.parse_args(["--lr", "1e-3"]), Cfg) == {"lr": 1e-3}
    assert "(default 99)" in p.format_help()


def test_a_field_without_a_known_type_needs_one():
    @dataclass
    class Odd:
        keys: tuple[str, ...] = field(default=("a",), metadata=opt("keys"))

    with pytest.raises(TypeError, match="Opt with a type"):
        parser_for(Odd)


def test_add_command_takes_its_texts_from_the_run_function():
    def run(args):
        """do the thing, 100%% of it

        The long description: it says what
        the command writes.
        """
        return 7

    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="cmd")
    p = add_command(sub, "thing", run)
    assert p.description == "The long description: it says what the command writes."
    assert "do the thing, 100% of it" in parser.format_help()
    args = parser.parse_args(["thing"])
    assert args.func(args) == 7


def test_share_takes_numbers_from_0_to_1_only():
    assert share("0") == 0.0 and share("0.5") == 0.5 and share("1") == 1.0
    for bad, why in (("-0.1", "from 0 to 1"), ("1.01", "from 0 to 1"), ("nan", "from 0 to 1"), ("half", "not a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            share(bad)
