"""Config values as they are written: YAML (1.2 booleans: `mixed_precision: no` stays the string "no"), and a
value converted to the type its field declares (`1e-3` is a string to YAML 1.1; `yes` may mean True)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import yaml

from ..errors import SLMError


class _ConfigLoader(yaml.SafeLoader):
    """YAML with only `true` / `false` as booleans (YAML 1.2), so that `mixed_precision: no` stays the string "no".

    YAML 1.1 (PyYAML's default) also reads yes/no/on/off as booleans. Boolean fields still accept those words:
    `coerce` converts values to each field's declared type.
    """


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """Parse config text (a file, or the value of a `key=value` override) with `_ConfigLoader`."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert `value` to `annotation` (bool, int, float, str, a tuple of floats, or optional thereof)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # all our unions are `X | None`
        if value is None:
            return None
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    try:
        return _convert(value, annotation)
    except (TypeError, ValueError):
        type_name = getattr(annotation, "__name__", str(annotation))
        raise SLMError(f"{name} must be {type_name}, got {value!r}") from None


def _convert(value: Any, annotation: Any) -> Any:
    if annotation is bool:
        if isinstance(value, str) and value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
        if not isinstance(value, bool):
            raise TypeError
        return value
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        if annotation is int and isinstance(value, int):
            return value
        number = float(value)
        if annotation is int and not number.is_integer():
            raise ValueError
        return annotation(number)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if typing.get_origin(annotation) is tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError
        items = tuple(_convert(item, float) for item in value)
        if len(items) != len(typing.get_args(annotation)):
            raise ValueError
        return items
    return value  # dict, Any
