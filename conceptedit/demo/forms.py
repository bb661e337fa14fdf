"""Config forms: a plugin's ``Config`` dataclass as a list of widget specs, and widget values back
into a validated config.

Types map to widgets as follows: ``bool`` → checkbox, ``int``/``float`` → number, ``Literal`` →
dropdown, ``str`` → textbox, ``list``/``tuple`` → comma-separated textbox; ``X | None`` uses the
widget of ``X`` (an empty widget means ``None``); anything else → a JSON textbox. This module does not
import Gradio, so the mapping is tested without a browser; ``conceptedit.demo.ui`` turns the specs
into components.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from conceptedit.config import config_fields, config_from_dict, field_help
from conceptedit.errors import ConfigError

WIDGETS = ("checkbox", "number", "dropdown", "textbox", "list", "json")


@dataclass(frozen=True)
class FieldSpec:
    """One widget of a config form."""

    name: str
    widget: str  # one of WIDGETS
    default: Any  # the widget's initial value (already in widget form: lists as "a, b")
    help: str = ""
    choices: tuple[Any, ...] = ()
    integer: bool = False  # number widgets: the field is an int
    optional: bool = False  # an empty widget means None
    required: bool = False  # the dataclass field has no default

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return annotation, optional
    return annotation, False


def _widget_for(annotation: Any) -> tuple[str, tuple[Any, ...], bool]:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "checkbox", (), False
    if annotation is int:
        return "number", (), True
    if annotation is float:
        return "number", (), False
    if origin is typing.Literal:
        return "dropdown", tuple(typing.get_args(annotation)), False
    if annotation is str:
        return "textbox", (), False
    if origin in (list, tuple) or annotation in (list, tuple):
        return "list", (), False
    return "json", (), False


def _to_widget_value(spec_widget: str, value: Any) -> Any:
    """A config value as the widget shows it."""
    if value is None:
        return None if spec_widget in ("number", "dropdown") else ""
    if spec_widget == "list":
        return ", ".join(str(v) for v in value)
    if spec_widget == "json":
        return json.dumps(value, default=str)
    return value


def _default_of(field: dataclasses.Field) -> tuple[Any, bool]:
    if field.default is not dataclasses.MISSING:
        return field.default, False
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory(), False
    return None, True


def form_fields(config_cls: type) -> list[FieldSpec]:
    """The widget specs of a config dataclass, in field order, with its defaults and help texts."""
    hints = typing.get_type_hints(config_cls)
    specs = []
    for name, field in config_fields(config_cls).items():
        inner, optional = _unwrap_optional(hints.get(name, Any))
        widget, choices, integer = _widget_for(inner)
        default, required = _default_of(field)
        specs.append(
            FieldSpec(
                name=name,
                widget=widget,
                default=_to_widget_value(widget, default),
                help=field_help(field),
                choices=choices,
                integer=integer,
                optional=optional,
                required=required,
            )
        )
    return specs


def config_values(config: Any) -> dict[str, Any]:
    """The widget values showing ``config`` (the inverse of :func:`config_from_values`)."""
    specs = {s.name: s for s in form_fields(type(config))}
    return {name: _to_widget_value(spec.widget, getattr(config, name)) for name, spec in specs.items()}


def _from_widget(spec: FieldSpec, value: Any) -> Any:
    empty = value is None or (isinstance(value, str) and not value.strip() and spec.widget != "textbox")
    if spec.widget == "textbox" and spec.optional and isinstance(value, str) and not value.strip():
        empty = True
    if empty:
        if spec.optional:
            return None
        if spec.widget == "list":
            return []
        raise ConfigError(f"config field {spec.label!r} needs a value")
    if spec.widget == "number":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"config field {spec.label!r} expects a number, got {value!r}") from None
        if spec.integer and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"config field {spec.label!r} expects a whole number, got {value:g}")
            return int(value)
        return value
    if spec.widget == "json":
        try:
            return json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config field {spec.label!r} expects JSON: {exc}") from None
    return value  # checkbox, dropdown, textbox, list (config_from_dict splits "a, b")


def config_from_values(config_cls: type, values: dict[str, Any]) -> Any:
    """Widget values (by field name) → a validated config; errors name the field and what it expects."""
    specs = {s.name: s for s in form_fields(config_cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)} for {config_cls.__name__}")
    converted = {name: _from_widget(specs[name], value) for name, value in values.items()}
    return config_from_dict(config_cls, converted)
