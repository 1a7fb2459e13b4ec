"""Plain, validated run configs: every CLI flag is declared once, here or in a
sibling ``*Config`` dataclass, and flows from there.

A config is a frozen dataclass whose fields carry their flag name, help text,
allowed choices and allowed range (``bounds``, an interval as written in
mathematics) in ``dataclasses.field(metadata=...)``.  ``add_arguments`` turns such
a class into argparse flags and ``from_args`` turns the parsed namespace back into
the dataclass, whose ``__post_init__`` calls ``check_declared`` (every field against
its declared choices and bounds) and then checks the rules between fields, raising
``ConfigError`` *before* TensorFlow starts any work.

Example:

```python
import argparse, dataclasses
from adv_large_batch.flags import (
    ConfigError, add_arguments, check_declared, cli_field, from_args, require)

@dataclasses.dataclass(frozen=True)
class Demo:
    lr: float = cli_field(1e-3, "--lr", "learning rate", bounds="(0, inf)")
    warmup: float = cli_field(0.1, "--warmup", "warm-up fraction", bounds="[0, 1)")
    end_lr: float = cli_field(0.0, "--end-lr", "final learning rate", bounds="[0, inf)")

    def __post_init__(self):
        check_declared(self)  # "--lr must be > 0, got -1.0", "--warmup must be in [0, 1), ..."
        require(self.end_lr <= self.lr, f"--end-lr {self.end_lr} is above --lr {self.lr}")

parser = argparse.ArgumentParser()
add_arguments(parser, Demo)
assert from_args(Demo, parser.parse_args(["--lr", "0.01"])).lr == 0.01
try:
    Demo(lr=-1.0)
except ConfigError as err:
    print(err)  # --lr must be > 0, got -1.0
```
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import re
import sys
import types
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message names the value and what is allowed."""


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*(.*)$")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The interval a numeric flag must lie in; ``Bounds.parse`` reads it as written in
    mathematics, optionally followed by a note for the message.

    ``"(0, inf)"``: > 0 and finite; ``"(0, inf]"``: > 0, inf allowed; ``"[0, 1)"``;
    ``"[1, inf)"``: >= 1; ``"[0, 255] pixels"``: in [0, 255], said as "(pixels)".
    nan is in no interval; neither is anything that is not a real number.
    """

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    note: str = ""

    @classmethod
    def parse(cls, text: str) -> Bounds:
        match = _INTERVAL.match(text)
        if not match:
            raise ValueError(f"bounds must look like '[0, 1)' or '(0, inf] note', got {text!r}")
        left, low, high, right, note = match.groups()
        return cls(float(low), float(high), left == "[", right == "]", note.strip())

    def __contains__(self, value: Any) -> bool:
        if not isinstance(value, numbers.Real):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self, note: bool = True) -> str:
        """What the interval allows, in words: ``> 0``, ``>= 1``, ``in [0, 1)``, then the
        note in parentheses (``note=False``: without it)."""
        low, high = f"{self.low:g}", f"{self.high:g}"
        if math.isinf(self.high) and not math.isinf(self.low):
            text = f"{'>=' if self.low_closed else '>'} {low}"
        elif math.isinf(self.low) and not math.isinf(self.high):
            text = f"{'<=' if self.high_closed else '<'} {high}"
        else:
            left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
            text = f"in {left}{low}, {high}{right}"
        return f"{text} ({self.note})" if note and self.note else text


def cli_field(
    default: Any,
    flag: str,
    help: str,
    choices: Sequence[Any] | None = None,
    *,
    nargs: str | None = None,
    bounds: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``choices``: the values allowed; ``bounds``: the interval a number must lie in
    (``Bounds.parse``).  Both are enforced by ``check_declared`` and shown in ``--help``.
    """
    meta = {
        "flag": flag,
        "help": help,
        "choices": choices,
        "nargs": nargs,
        "bounds": None if bounds is None else Bounds.parse(bounds),
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def _optional_fields(cls: type) -> frozenset[str]:
    """The fields of ``cls`` whose type admits None (``X | None``): None is always allowed."""
    return frozenset(
        name
        for name, tp in typing.get_type_hints(cls).items()
        if typing.get_origin(tp) in (typing.Union, types.UnionType)
        and type(None) in typing.get_args(tp)
    )


def check_declared(config: Any) -> None:
    """Raise ``ConfigError`` for the first field of ``config`` (a ``cli_field`` dataclass)
    outside its declared ``choices`` or ``bounds``, naming the flag, what is allowed and the
    value: ``--beta1 must be in [0, 1), got 1.5``.  None passes where the type allows it.
    """
    optional = _optional_fields(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and f.name in optional:
            continue
        flag, choices, bounds = (f.metadata.get(key) for key in ("flag", "choices", "bounds"))
        if choices and not f.metadata.get("nargs"):
            require(value in choices, f"{flag} must be one of {tuple(choices)}, got {value!r}")
        if bounds is not None:
            require(value in bounds, f"{flag} must be {bounds.describe()}, got {value}")


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return _base_type(typing.get_args(tp)[0])
    return tp


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """Add one flag per ``cli_field`` of dataclass ``cls`` to ``parser``."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "flag" not in meta:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
        if tp is bool:  # `--flag` alone means true; `--flag false` also works
            kwargs.update(type=_bool, metavar="BOOL", nargs="?", const=True)
        elif tp in (int, float, str):
            kwargs["type"] = tp
        if meta.get("choices"):
            kwargs["choices"] = list(meta["choices"])
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        notes = []
        if meta.get("bounds") is not None:
            notes.append(meta["bounds"].describe(note=False).replace("%", "%%"))
        if default is not None and default != [] and "%(default)" not in kwargs["help"]:
            notes.append("default: %(default)s")
        if notes:
            kwargs["help"] += f" ({'; '.join(notes)})"
        group.add_argument(meta["flag"], **kwargs)


class _DeprecatedAlias(argparse.Action):
    """Stores into the new flag's ``dest`` and says once on stderr which flag to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: note: {option_string} is deprecated, use {self.replacement}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, alias: str, flag: str) -> None:
    """Accept ``alias`` as an old spelling of ``flag`` (already added): same value, type
    and choices; using it prints a one-line deprecation note."""
    action = parser._option_string_actions[flag]
    parser.add_argument(
        alias,
        dest=action.dest,
        type=action.type,
        choices=action.choices,
        default=argparse.SUPPRESS,  # the default stays the new flag's
        help=f"deprecated spelling of {flag}",
        action=_DeprecatedAlias,
        replacement=flag,
    )


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed flags (validation runs in ``__post_init__``)."""
    values = {}
    for f in dataclasses.fields(cls):
        if "flag" in f.metadata and hasattr(args, f.name):
            value = getattr(args, f.name)
            if (
                isinstance(value, list)
                and typing.get_origin(typing.get_type_hints(cls)[f.name]) is tuple
            ):
                value = tuple(value)
            values[f.name] = value
    return cls(**values)
