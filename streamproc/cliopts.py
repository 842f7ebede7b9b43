"""Command-line options derived from the settings models: one source of truth.

A setting is declared once, as a pydantic field of :mod:`streamproc.settings` (type, bounds,
default, description). :func:`settings_options` turns a list of those fields into typer options
of a command: ``--field-name``, the field's type (a choice for a ``Literal``), the environment
variable the settings read (``STREAMPROC_FIELD_NAME``) and the first sentence of the field's
description as help. Nothing is restated, so the flags, their help and the configuration
reference (generated from the same fields) cannot drift apart. Validation stays the model's: a
value out of range is the same error whether it came from a flag, the environment or a file.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])

ENV_PREFIX = "STREAMPROC_"


def help_text(field: FieldInfo) -> str:
    """The first sentence of the field's description, and its default when it has one."""
    description = " ".join((field.description or "").split())
    sentence, dot, _ = description.partition(". ")
    text = sentence + ("." if dot or description.endswith(".") else "")
    text = text.rstrip(".") + "."
    default = field.default
    if default is not None and not callable(default) and default is not ...:
        text += f" Default: {default}."
    return text


def _choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) of strings, else None."""
    if typing.get_origin(annotation) is Literal:
        return tuple(str(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            if (found := _choices(arm)) is not None:
                return found
    return None


def _scalar(annotation: Any) -> type:
    """``int``, ``float`` or ``str``: the option's Python type for a field annotation."""
    arms = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    for kind in (bool, int, float, str):
        if kind in arms:
            return kind
    raise TypeError(f"no command-line type for a setting of type {annotation!r}")


def option_for(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """``(annotation, default)`` of the typer parameter for settings field ``name``."""
    envvar = f"{ENV_PREFIX}{name.upper()}"
    info = typer.Option(envvar=envvar, help=help_text(field), show_default=False)
    choices = _choices(field.annotation)
    if choices is not None:  # typer offers a Literal's values as choices
        return Annotated[Literal[choices] | None, info], None
    kind = _scalar(field.annotation)
    return Annotated[kind | None, info], None


def settings_options(model: type[BaseModel], names: Sequence[str]) -> Callable[[F], F]:
    """Give a typer command one option per field of ``model`` in ``names``.

    The command takes a keyword parameter ``settings`` instead: a dict of the options given on
    the command line or in the environment (None ones left out), to pass to the model, which
    fills in the rest from its defaults.
    """
    fields = model.model_fields
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{model.__name__} has no fields {unknown}")

    def decorate(command: F) -> F:
        hints = typing.get_type_hints(command, include_extras=True)
        signature = inspect.signature(command)
        parameters = [
            parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
            for parameter in signature.parameters.values()
            if parameter.name != "settings"
        ]
        annotations = {p.name: p.annotation for p in parameters}
        for name in names:
            annotation, default = option_for(name, fields[name])
            parameters.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )
            annotations[name] = annotation

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            settings = {name: value for name, value in given.items() if value is not None}
            return command(**kwargs, settings=settings)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = annotations
        return typing.cast(F, wrapper)

    return decorate
