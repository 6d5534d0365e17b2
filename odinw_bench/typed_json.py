"""Check decoded JSON against type annotations, naming the dotted field of the first mismatch.

The annotations of a TypedDict are the schema: ``check_type(data, RunRecord, "", path)`` walks ``data`` and raises a
:class:`~odinw_bench.errors.UserError` such as ``runs/x.json: task.version: missing field``. Only what JSON can hold
is supported: nested TypedDicts, ``dict[str, X]``, ``list[X]``, ``Literal``, unions with ``None``, ``Any``, ``str``,
``bool``, ``int`` (bools are refused) and ``float`` (ints accepted; NaN and infinities refused).

Example::

    from odinw_bench.typed_json import check_type

    check_type({"name": "x", "version": "1"}, TaskInfo, "task", "runs/x.json")  # UserError at task.version
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, is_typeddict

from odinw_bench.errors import UserError


def check_type(value: Any, hint: Any, field: str, path: str | Path | None) -> None:
    """Raise a UserError naming ``field`` unless ``value`` matches the annotation ``hint``.

    Args:
        value: Decoded JSON (dicts, lists, str, int, float, bool, None).
        hint: A TypedDict, or an annotation built from ``dict``, ``list``, ``Literal``, unions, ``Any`` and scalars.
        field: Dotted name of ``value`` in the document (``""`` for the whole document); nested failures extend it.
        path: The file the document came from, named in the error (None if it has none).

    Raises:
        UserError: With the dotted field of the first mismatch: a missing key, or a value of the wrong type.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            raise UserError(f"expected an object, got {_describe(value)}", path=path, field=field or None)
        for key, sub in typing.get_type_hints(hint).items():
            sub_field = f"{field}.{key}" if field else key
            if key not in value:
                raise UserError("missing field", path=path, field=sub_field)
            check_type(value[key], sub, sub_field, path)
        return
    if origin in (typing.Union, types.UnionType):
        if not any(_matches(value, option) for option in args):
            raise UserError(f"expected {_hint_name(hint)}, got {_describe(value)}", path=path, field=field)
        for option in args:  # descend into the matching container for a precise field name
            if typing.get_origin(option) is dict or is_typeddict(option):
                if isinstance(value, dict):
                    check_type(value, option, field, path)
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"expected an object, got {_describe(value)}", path=path, field=field)
        for key, item in value.items():
            check_type(item, args[1], f"{field}.{key}", path)
        return
    if not _matches(value, hint):
        raise UserError(f"expected {_hint_name(hint)}, got {_describe(value)}", path=path, field=field)


def _matches(value: Any, hint: Any) -> bool:
    """Shallow type test of ``value`` against one annotation (containers: only the container type)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or is_typeddict(hint):
        return isinstance(value, dict)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"a list of {_hint_name(typing.get_args(hint)[0])}"
    return {float: "number", int: "integer", str: "string", bool: "boolean"}.get(hint, "an object")


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON ``true`` must not pass as ``1``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
