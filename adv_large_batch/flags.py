"""Plain, validated run configs: every CLI flag is declared once, here or in a
sibling ``*Config`` dataclass, and flows from there.

A config is a frozen dataclass whose fields carry their flag name, help text and
allowed choices in ``dataclasses.field(metadata=...)``.  ``add_arguments`` turns
such a class into argparse flags and ``from_args`` turns the parsed namespace
back into the dataclass, whose ``__post_init__`` rejects bad values with a
``ConfigError`` *before* TensorFlow starts any work.

Example:

```python
@dataclasses.dataclass(frozen=True)
class Demo:
    lr: float = cli_field(1e-3, "--lr", "learning rate")

    def __post_init__(self):
        require(self.lr > 0, f"--lr must be > 0, got {self.lr}")
```
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message names the value and what is allowed."""


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def cli_field(
    default: Any,
    flag: str,
    help: str,
    choices: Sequence[Any] | None = None,
    *,
    nargs: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag."""
    meta = {"flag": flag, "help": help, "choices": choices, "nargs": nargs}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
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
        if default is not None and default != [] and "%(default)" not in kwargs["help"]:
            kwargs["help"] += " (default: %(default)s)"
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


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    return dataclasses.asdict(config)
