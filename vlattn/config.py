"""Config dataclasses: documented fields, TOML loading and conversion to click options.

Tasks describe their options as a dataclass whose fields use :func:`option`::

    @dataclass
    class Config:
        hidden_size: int = option(100, help="LSTM hidden units")
        attention: str = option("additive", help="attention mechanism by name")
        cell: Literal["lstm", "gru"] = option("lstm", help="recurrent cell")

``vlattn train TASK --help`` turns each field into ``--hidden-size`` etc.: ``bool`` fields become
``--flag/--no-flag``, ``Literal`` fields become choices, ``X | None`` fields accept ``none``.
This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from vlattn.errors import VlattnError

T = TypeVar("T")


class ConfigError(VlattnError):
    """A config value or file that cannot be used."""


def option(default: Any, *, help: str = "", choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with a default and help text for the generated command-line option."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from TOML, JSON or the command line) to the field type ``tp``."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"option {name!r} cannot be empty")
    origin = typing.get_origin(inner)
    try:
        if origin is Literal:
            allowed = typing.get_args(inner)
            for a in allowed:
                if value == a or str(value) == str(a):
                    return a
            raise ConfigError(f"option {name!r} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"option {name!r} must be true or false, got {value!r}")
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(inner) or (str,)
            items = value.split(",") if isinstance(value, str) else list(value)
            converted = [coerce(v.strip() if isinstance(v, str) else v, item_tp, name) for v in items]
            return converted if origin is list else tuple(converted)
        if origin is dict or inner is dict:
            return dict(json.loads(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r} expects {getattr(inner, '__name__', inner)}, got {value!r}") from None
    return value


def from_mapping(cls: type[T], values: Mapping[str, Any], *, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``values``, converting types; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        import difflib

        hints_text = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hints_text.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        src = f" in {where}" if where else ""
        raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''}{src}: {', '.join(hints_text)}")
    kwargs = {k: coerce(v, hints[k], k) for k, v in values.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def field_names(cls: type) -> list[str]:
    """Names of the dataclass's fields, in order."""
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict.

    Keys may sit at the top level or in ``[task]`` / ``[trainer]`` tables; dashes in keys are
    accepted for underscores.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("task", "trainer") and isinstance(value, dict):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    return flat


class OptionalNumber(click.ParamType):
    """An int or float command-line option that also accepts ``none``."""

    def __init__(self, tp: type) -> None:
        self.tp = tp
        self.name = f"{'integer' if tp is int else 'float'}|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return "none"
        try:
            return self.tp(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)


def click_options(cls: type, *, defaults: Mapping[str, Any] | None = None) -> list[Any]:
    """click options for every field of the dataclass ``cls``.

    Each option's default is ``None`` so that the caller can tell which ones the user set (and
    let them override a config file); the field default is shown in the help text.
    """
    hints = _hints(cls)
    defaults = defaults or {}
    params: list[Any] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = defaults.get(f.name, f.default_factory())
        help_text = f.metadata.get("help", "")
        shown = default if not isinstance(default, list | tuple) else ",".join(map(str, default))
        shown = '""' if shown == "" else "none" if shown is None else shown
        help_text = f"{help_text} [default: {shown}]".strip()
        if tp is bool and not optional:
            params.append(click.Option([f"{flag}/--no-{flag[2:]}"], default=None, help=help_text, show_default=False))
            continue
        choices = f.metadata.get("choices")
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
        if choices:
            kind: Any = click.Choice([str(c) for c in choices] + (["none"] if optional else []))
        elif tp in (int, float):
            kind = (click.INT if tp is int else click.FLOAT) if not optional else OptionalNumber(tp)
        else:
            kind = click.STRING
        params.append(click.Option([flag], type=kind, default=None, help=help_text, metavar=None))
    return params
