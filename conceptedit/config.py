"""Typed plugin configs: dataclasses read strictly from dicts and ``key=value`` strings.

Unknown keys are an error naming the valid ones (never dropped silently); values given as strings
(CLI ``--set``, YAML) are converted to the field's declared type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from conceptedit.errors import ConfigError
from conceptedit.validate import check_float, check_int, check_seed, short

C = TypeVar("C")


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def field_help(field: dataclasses.Field) -> str:
    """The help text of a config field (``field(metadata={"help": ...})``)."""
    return str(field.metadata.get("help", ""))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                if len(options) == 1:  # "X | None": X's own message says exactly what is wrong
                    raise
        raise ConfigError(f"config key {key!r}: cannot read {short(value)} as {annotation}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {short(value)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {short(value)}")
        inner = args[0] if args else Any
        items = [_coerce(v.strip() if isinstance(v, str) else v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key {key!r} expects true/false, got {short(value)}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects {annotation.__name__}, got {short(value)}")
        try:
            number = annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config key {key!r} expects {annotation.__name__}, got {short(value)}") from None
        if annotation is int and isinstance(value, float) and value != number:
            raise ConfigError(f"config key {key!r} expects an integer, got {short(value)}")
        if annotation is float:  # NaN/inf would flow silently into the maths (e.g. a black-image edit)
            check_float(f"config key {key!r}", number)
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} expects a string, got {short(value)}")
        return value
    return value


def config_from_dict(cls: type[C], values: dict[str, Any] | None) -> C:
    """Build ``cls`` from ``values``; unknown keys raise naming the valid ones."""
    values = dict(values or {})
    fields = config_fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], key) for key, value in values.items()}
    for key, value in kwargs.items():
        _check_bounds(fields[key], value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def _check_bounds(field: dataclasses.Field, value: Any) -> None:
    """``field(metadata={"min": 1})`` / ``"max"`` bounds, and seeds in ``[0, 2**63)`` (fields named ``seed``)."""
    if value is None or isinstance(value, (bool, str, list, tuple, dict)):
        return
    name = f"config key {field.name!r}"
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if field.name == "seed" or field.name.endswith("_seed"):
        check_seed(value, name)
    elif isinstance(value, int):
        check_int(name, value, low, high)
    elif isinstance(value, float):
        check_float(name, value, low)
        if high is not None and value > high:
            raise ConfigError(f"{name} must be <= {high}, got {value}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
