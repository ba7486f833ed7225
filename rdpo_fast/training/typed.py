"""Settings checked against a dataclass's declared field types (so a field added later is covered with
no extra code): `batch_size: two` in a config file is "config file X: batch_size must be an int, got
'two'", not a TypeError deep inside validation.

Values are taken as a YAML/JSON file or the Python API gives them, with the conversions a person
writing a file would expect: an int where a float is declared, a whole float (4.0) where an int is,
a number written as a string ("5e-5", which YAML 1.1 leaves a string) where a number is, and
true/false/yes/no strings where a bool is. Anything else of the wrong type is refused. A field's
metadata "choices" are checked too.
"""
from __future__ import annotations

import dataclasses
import types
import typing

# The words a config file or a flag may write for a boolean.
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class _Mismatch(Exception):
    pass


def describe(tp: object) -> str:
    """A declared type in words: 'an int', 'a number or null', 'a list of strings', ..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = describe(args[0]).split(" ", 1)[-1] + "s" if args else "values"
        return f"a list of {inner}"
    if origin is dict:
        return "a mapping"
    return {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
        tp, f"a {getattr(tp, '__name__', tp)}")


def coerce(value: object, tp: object) -> object:
    """`value` as the declared type `tp`, or _Mismatch."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        # An exact type match first, so 1 stays an int under `int | float` and "1" a str under `str | int`.
        for a in args:
            if a is not type(None) and _exact(value, a):
                return value
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            items = [coerce(v, args[0]) for v in value] if args else list(value)
            return tuple(items) if origin is tuple else items
        raise _Mismatch
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is typing.Any or isinstance(value, tp):
        return value
    raise _Mismatch


def _exact(value, tp) -> bool:
    if typing.get_origin(tp) is not None or not isinstance(tp, type):
        return False
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, tp)


def field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_values(cls, values: dict, where: str = "", lines: dict | None = None) -> dict:
    """`values` (field name -> value) converted to `cls`'s declared field types; a value that does not
    fit is a ValueError naming the key (and its line in `lines`, when known): "WHERE: KEY must be ..."."""
    types_ = field_types(cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in types_:
            out[key] = value
            continue
        prefix = where
        if lines and key in lines:
            prefix = f"{where}:{lines[key]}" if where else f"line {lines[key]}"
        prefix = f"{prefix}: " if prefix else ""
        try:
            v = coerce(value, types_[key])
        except _Mismatch:
            raise ValueError(f"{prefix}{key} must be {describe(types_[key])}, got {value!r}") from None
        allowed = choices.get(key)
        if allowed and v is not None and v not in allowed:
            raise ValueError(f"{prefix}{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        out[key] = v
    return out


def check_instance(obj: object) -> None:
    """Checks (and converts in place) every field of a dataclass instance."""
    fixed = check_values(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    for k, v in fixed.items():
        if v is not getattr(obj, k):
            setattr(obj, k, v)
