"""Frozen config dataclasses to and from the command line and JSON.

``real-lens run`` derives one option per :class:`~real_lens.experiment.ExperimentConfig` field
(``k_grid`` -> ``--k-grid 8,24``), so a field added to the dataclass is reachable from the
command line without touching the CLI; its trailing ``# comment`` becomes the option's help.
:func:`load_config` reads a run's ``config.json`` back into the dataclass, so
``real-lens run --config runs/x/config.json`` reruns a saved configuration.

Why hand-written and not a library: tyro, simple-parsing and jsonargparse all derive options
from dataclasses, but each would replace our argparse parser (sub-commands, one-line errors
with exit code 2) or its error handling, none reads our comma-separated grids or our
"option not given = the preset's value" rule, and jsonargparse's own ``--config`` expects a flat
file rather than our ``{"config": ..., "real_lens_version": ...}``. What we need — a type
per field, parsed from ``typing.get_type_hints`` — is the ~100 lines below.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import types
import typing
from typing import Any, Literal, Union

from .errors import RealLensError

logger = logging.getLogger(__name__)
NONE_WORD = "none"  # on the command line, sets an optional field to None


# --------------------------------------------------------------------------- types
def _optional(hint) -> tuple[Any, bool]:
    """``(inner type, accepts None)`` for ``X | None`` / ``Optional[X]``; ``(hint, False)`` otherwise."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
        raise TypeError(f"unsupported union type {hint!r} (only X | None)")
    return hint, False


def _scalar_parser(hint, name: str):
    """A function ``str -> value`` for one scalar type (int, float, str, bool, Literal)."""
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return hint
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)

        def parse_literal(text: str):
            for choice in choices:
                if str(choice) == text:
                    return choice
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")

        return parse_literal
    raise TypeError(f"config field {name!r} has type {hint!r}, which the CLI cannot read; use int, float, str, "
                    "bool, a Literal, a tuple of those, or any of them | None")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _value_parser(hint, name: str, choices=None):
    """``str -> value`` for a field type: scalars, ``tuple[X, ...]`` as ``a,b,c``, ``none`` for optionals;
    with ``choices``, every value must be one of them."""
    inner, optional = _optional(hint)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config field {name!r}: only variable-length tuples tuple[X, ...] are supported")
        item = _scalar_parser(args[0], name)
        kind = f"comma-separated {getattr(args[0], '__name__', args[0])} values"

        def parse(text: str):
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
    else:
        item = _scalar_parser(inner, name)
        kind = getattr(inner, "__name__", str(inner))
        parse = item

    def parse_text(text: str):
        if optional and text.strip().lower() == NONE_WORD:
            return None
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"could not read {text!r} as {kind} ({exc})") from None
        if value == ():
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        wrong = [v for v in (value if isinstance(value, tuple) else (value,)) if choices and v not in choices]
        if wrong:
            raise argparse.ArgumentTypeError(f"{wrong[0]!r} is not one of {', '.join(map(str, choices))}")
        return value

    return parse_text


def _option(name: str) -> str:
    return name.replace("_", "-")


def read_field_comments(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in ``cls``'s source (used as option help)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (e.g. a frozen app): options simply have no help
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


# --------------------------------------------------------------------------- CLI
def add_config_options(parser: argparse.ArgumentParser, cls, *, aliases: dict[str, list[str]] | None = None,
                       help: dict[str, str] | None = None, choices: dict[str, Any] | None = None) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``.

    ``aliases``: extra option strings per field; ``help``: help text per field (default: the
    field's trailing comment); ``choices``: the allowed values of a field (of each item, for a
    tuple field), shown in ``--help`` as ``{a,b,c}`` and checked when parsed; a ``Literal`` field's
    values are its choices. Options not given are absent from the parsed namespace
    (``argparse.SUPPRESS``), so :func:`read_overrides` returns only what the user typed.
    """
    hints = typing.get_type_hints(cls)
    comments = {**read_field_comments(cls), **(help or {})}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner, optional = _optional(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = comments.get(f.name, "")
        text = f"{text + '; ' if text else ''}default {shown}" + (f" ({NONE_WORD!r} sets None)" if optional else "")
        text = text.replace("%", "%%")  # argparse formats help with %
        names = [f"--{_option(f.name)}", *(aliases or {}).get(f.name, [])]
        if inner is bool and not optional:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
            continue
        item = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else inner
        allowed = (choices or {}).get(f.name)
        if allowed is None and typing.get_origin(item) is Literal:
            allowed = typing.get_args(item)
        if allowed is not None:
            metavar = "{" + ",".join(map(str, allowed)) + "}"
        else:
            metavar = getattr(item, "__name__", "VALUE").upper()
        if item is not inner:
            metavar += ",..."
        parser.add_argument(*names, dest=f.name, type=_value_parser(hint, f.name, allowed), default=argparse.SUPPRESS,
                            metavar=metavar, help=text)


def read_overrides(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line (parsed by :func:`add_config_options`)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


# --------------------------------------------------------------------------- JSON
def build_config(cls, values: dict[str, Any], *, source: str = "config"):
    """``cls(**values)`` with JSON's lists turned back into the fields' tuple types.

    Unknown keys are an error (a config from a newer real-lens); missing keys take the
    dataclass defaults and are logged (a config from an older one).
    """
    if not isinstance(values, dict):
        raise RealLensError(f"{source}: expected a JSON object of settings, found {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise RealLensError(
            f"{source} has settings this real-lens does not know: {unknown}; known: {', '.join(names)}. "
            "It was written by another version; remove those keys or install that version"
        )
    missing = [n for n in names if n not in values]
    if missing:
        logger.warning("%s does not set %s; using today's defaults for them", source, ", ".join(missing))
    converted = {name: _from_json(value, hints[name], name, source) for name, value in values.items()}
    try:
        return cls(**converted)
    except TypeError as exc:
        raise RealLensError(f"{source}: {exc}") from None


def _from_json(value, hint, name: str, source: str):
    inner, optional = _optional(hint)
    if value is None:
        if optional:
            return None
        raise RealLensError(f"{source}: {name} is null, but it must be set (type {hint})")
    if dataclasses.is_dataclass(inner):
        return build_config(inner, value, source=f"{source} ({name})")
    if typing.get_origin(inner) is tuple:
        if not isinstance(value, list):
            raise RealLensError(f"{source}: {name} should be a list; found {value!r}")
        item = typing.get_args(inner)[0]
        return tuple(_from_json(v, item, name, source) for v in value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
