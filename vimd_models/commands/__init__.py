"""The ``vimd`` subcommands: one registry, filled by the command modules when they are imported.

A command is a function ``run(args) -> exit code`` registered with ``@command(name, help, args)``,
where ``args(parser)`` adds its arguments. Adding a command is one new module (or one function in
a module below) and, for a new module, its import line at the end of this file.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    trailing: str | None  # the positional list that also takes key=value arguments given after options


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
            trailing: str | None = None):
    """Decorator: register ``run`` as ``vimd <name>``."""
    def deco(run):
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        COMMANDS[name] = Command(name, help, args, run, trailing)
        return run
    return deco


def parse_kwargs(items) -> dict:
    """``key=value`` model arguments; values are read as YAML (numbers, lists, true/false)."""
    import yaml
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"model argument '{it}' must look like key=value")
        k, v = it.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def parse_shape(text: str, names: str) -> tuple[int, ...]:
    """``--input``'s sizes, one positive integer per name of ``names`` (e.g. "C,H,W")."""
    n = len(names.split(","))
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != n or min(shape) < 1:
        raise UserError(f"--input must be {names} ({n} positive integers), got {text!r}")
    return shape


def config_args(p: argparse.ArgumentParser) -> None:
    """A config (a packaged config's name or a YAML file) and key.sub=value overrides."""
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")


from . import runs, demos, zoo, images, tables  # noqa: E402,F401  (register the commands, in help order)
