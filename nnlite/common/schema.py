"""Map JSON/YAML dicts onto (frozen) dataclasses and back, rejecting unknown keys by name.

Used for nnlite's own files only (plans.json, fingerprint.json, case properties, configs/*.yaml);
a user's dataset.json keeps its extra keys and is parsed in `dataset.py`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from nnlite.common.errors import UserError, did_you_mean

T = TypeVar("T")
# Field metadata: to_jsonable leaves the field out while it holds its default, so files written
# before the field existed and files that do not use it stay byte-identical (from_dict fills it in).
OMIT_DEFAULT = "omit_default"


def to_jsonable(value: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, recursively (JSON-native output)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not _omitted_default(f, getattr(value, f.name))}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value


def _omitted_default(field: dataclasses.Field, value: Any) -> bool:
    if not field.metadata.get(OMIT_DEFAULT):
        return False
    default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    return value == default


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a dict; unknown or missing keys raise UserError naming the key."""
    if not isinstance(data, dict):
        raise UserError(where or cls.__name__, f"expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(where or cls.__name__, f"unknown key '{unknown[0]}' for {cls.__name__}"
                                               + did_you_mean(unknown[0], fields))
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}" if where else name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(where or cls.__name__, f"missing key '{name}' for {cls.__name__}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in _as_list(value, where))
        return tuple(_convert(a, item, where) for a, item in zip(args, _as_list(value, where)))
    if origin is list:
        return [_convert(args[0], item, where) for item in _as_list(value, where)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(where, "expected a mapping")
        return {_dict_key(args[0], k, where): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint in SCALAR_NAMES:
        return _convert_scalar(hint, value, where)
    return value


# What a person is told a setting expects: "expected a number, got 'abc'"
SCALAR_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a text"}


def _convert_scalar(hint: type, value: Any, where: str) -> Any:
    """int, float, bool or str; a bool is never a number and a number never a bool."""
    is_bool = isinstance(value, bool)
    if (hint is bool and is_bool) or (hint is str and isinstance(value, str)):
        return value
    if hint is int and not is_bool and isinstance(value, int):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is float and not is_bool and isinstance(value, (int, float)):
        return float(value)
    raise UserError(where, f"expected {SCALAR_NAMES[hint]}, got {value!r}")


def _dict_key(hint: Any, key: Any, where: str) -> Any:
    if hint is int and isinstance(key, str):  # JSON object keys are always strings
        try:
            return int(key)
        except ValueError:
            raise UserError(where, f"expected an integer key, got {key!r}") from None
    return _convert(hint, key, where)


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise UserError(where, f"expected a list, got {value!r}")
    return list(value)


def flat_settings(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"epochs": 5}, "data.workers": 0} → {"training.epochs": 5, "data.workers": 0}
    (the keys of --set, the settings diff of a resume, MLflow parameters, nnlite.train's settings)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
