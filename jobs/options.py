"""Options declared once: a dataclass field carries its default and its help, and
the command line is derived from it.

    @dataclass(frozen=True)
    class Schedule:
        log_every: int = opt(20, "steps between metric reports")

    add_options(parser, Schedule)              # --log-every N (default 20)
    Schedule(**options_from(Schedule, args))   # back to the typed value

Only fields made with :func:`opt` become options; the others are filled in by code
(a driver's planning step, a parent search).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any

_BASIC = (int, float, str)


def opt(default: Any, help: str, *, flag: str = "", flags: tuple[str, ...] = (), group: str = "",
        **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line option ``--field-name`` (or ``flag``).

    ``flags``: extra spellings (CUT's own names); ``group``: fields sharing a group are
    mutually exclusive; ``argparse_kwargs`` (``choices``, ``metavar``, ``type``) go to
    ``add_argument`` as they are."""
    return field(default=default, metadata={"help": help, "flag": flag, "flags": flags, "group": group, "argparse": argparse_kwargs})


def cli_fields(cls: type) -> list[Field]:
    return [f for f in fields(cls) if "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type, *, defaults: dict[str, Any] | None = None,
                skip: tuple[str, ...] = ()) -> None:
    """Add one option per :func:`opt` field of ``cls`` (``defaults`` override a field's
    default for this command, e.g. a search evaluating fewer images than a run)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f.metadata["help"]}
        kind = _value_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = "store_true"
        elif kind in _BASIC:
            kwargs["type"] = kind
        kwargs.update(f.metadata["argparse"])
        if default not in (None, False, "") and "default" not in kwargs["help"]:
            kwargs["help"] += " (default: %(default)s)"
        where = parser
        if f.metadata["group"]:
            if f.metadata["group"] not in groups:
                groups[f.metadata["group"]] = parser.add_mutually_exclusive_group()
            where = groups[f.metadata["group"]]
        where.add_argument(f.metadata["flag"] or "--" + f.name.replace("_", "-"), *f.metadata["flags"], **kwargs)


def options_from(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`opt` fields of ``cls`` as parsed; an option left empty keeps the field's default."""
    out = {}
    for f in cli_fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = f.default if value is None and f.default is not MISSING else value
    return out


def _value_type(hint: Any) -> Any:
    """int | None -> int; a plain type stays as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return hint
