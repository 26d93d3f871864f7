"""Checking values users give: settings read as the command line reads them (`coerce`), with errors that name the
setting, what was received and the fix."""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np


def check_pattern(pattern: str, argument: str) -> None:
    """Raise a `ValueError` naming `argument` unless `pattern` is a valid regular expression."""
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"`{argument}` {pattern!r} is not a valid regular expression ({error}); give a regex that matches whole "
            "module names, or a list of name suffixes."
        ) from None


_TRUE, _FALSE = {"true", "yes", "y", "1", "on"}, {"false", "no", "n", "0", "off"}


def coerce(value, annotation, where: str):
    """`value` read as `annotation` the way the command line reads it (strings are parsed), or a `ValueError` naming
    `where`. Types it does not know (enums, classes) are accepted as they are."""
    origin = typing.get_origin(annotation)
    if annotation is Any or value is None:  # None is "unset" for many fields annotated without Optional
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return coerce(value, member, where)
            except ValueError as error:
                errors.append(error)
        if errors:
            raise errors[0]
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"`{where}` must be true or false, got {value!r}.")
    if annotation in (int, float):
        if isinstance(value, str):
            try:
                value = annotation(value.strip())
            except ValueError:
                raise ValueError(f"`{where}` must be a number ({annotation.__name__}), got {value!r}.") from None
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise ValueError(f"`{where}` must be a number ({annotation.__name__}), got {value!r}.")
        if annotation is int and not isinstance(value, numbers.Integral):
            raise ValueError(f"`{where}` must be a whole number, got {value!r}.")
        if not math.isfinite(float(value)):
            raise ValueError(f"`{where}` must be a finite number, got {value!r}.")
        return annotation(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"`{where}` must be a string, got {value!r}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"`{where}` must be a list, got {value!r}.")
        item = (typing.get_args(annotation) or (Any,))[0]
        return [coerce(element, item, f"{where}[{i}]") for i, element in enumerate(value)]
    if origin is dict or annotation is dict:
        if is_dataclass(value) and not isinstance(value, type):
            return value  # a config object given for a mapping of its fields
        if isinstance(value, str):
            return value  # parsed (as JSON) by the owner, which names the field on a bad string
        if not isinstance(value, dict):
            raise ValueError(f"`{where}` must be a mapping, got {value!r}.")
        return value
    return value


def coerce_fields(obj, prefix: str) -> None:
    """Coerce every field of the dataclass `obj` to its annotation (see `_coerce`), in place."""
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # an annotation that cannot be resolved here: leave the values to the class's own checks
        return
    for spec in fields(obj):
        if spec.name in hints and spec.init:
            where = f"{prefix}['{spec.name}']" if prefix else spec.name
            object.__setattr__(obj, spec.name, coerce(getattr(obj, spec.name), hints[spec.name], where))
