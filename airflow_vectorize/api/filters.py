"""pg_vectorize's filter grammar (``column=op.value``) read into the hook's filters (``{column: {op: value}}``).

pg_vectorize's server reads every query parameter of ``GET /api/v1/search`` that is not one of its own as a
filter, and so do we:

- ``op.value`` with ``op`` one of ``eq gt gte lt lte`` (case-sensitive); a value without a dot is ``eq``;
  a value whose text before its first dot is not an operator is refused (``price=3.5`` is the unknown
  operator ``3``: write ``price=eq.3.5``);
- ``eq`` values are tried as a boolean (``true`` / ``false``), then an integer, then a float, else kept as
  text; the comparisons need a number.

What we do differently: a non-finite number (``nan``, ``inf``) is refused rather than compared, and a
column given twice is refused rather than one of its values silently winning.

``POST /api/v1/search`` takes ``filters`` as an object: a string ``"op.value"`` whose ``op`` is one of those
five is read by the same grammar (pg_vectorize's POST body), anything else is ours (a scalar for equality,
or ``{op: value}`` with ``eq ne gt gte lt lte in``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_vectorize.exceptions import InvalidInputError

OPERATORS = ("eq", "gt", "gte", "lt", "lte")
_INTEGER = re.compile(r"[+-]?[0-9]+")
# Rust's f64 grammar (what pg_vectorize's server parses with): digits with an optional fraction and exponent,
# or inf / infinity / nan in any case.
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
_OWN_OPERATOR = re.compile(r"(?:eq|gt|gte|lt|lte)\.")


def parse_value(column: str, text: str) -> dict[str, Any]:
    """One ``column=op.value`` filter as the hook's ``{op: value}``."""
    op, dot, rest = text.partition(".")
    if not dot:
        op, rest = "eq", text
    elif op not in OPERATORS:
        raise InvalidInputError(
            f"Unknown operator: {op} (filter {column}={text!r}); operators: {', '.join(OPERATORS)}, written"
            f" op.value; a value with a dot needs its operator, e.g. {column}=eq.{text}")
    number = _number(rest)
    if number is not None and not math.isfinite(number):
        raise InvalidInputError(f"filter {column}={text!r}: {rest!r} is not a finite number")
    if op == "eq":
        if rest in ("true", "false"):
            return {op: rest == "true"}
        return {op: rest if number is None else number}
    if number is None:
        raise InvalidInputError(
            f"Comparison operators (gt, gte, lt, lte) require numeric values, got: {rest!r} (filter {column})")
    return {op: number}


def _number(text: str) -> int | float | None:
    if _INTEGER.fullmatch(text):
        value = int(text)
        if -(2 ** 63) <= value < 2 ** 63:  # i64, as pg_vectorize; a longer one is a float there too
            return value
    if _FLOAT.fullmatch(text):
        return float(text)
    return None


def from_query(params: Iterable[tuple[str, str]], reserved: Iterable[str]) -> dict[str, Any]:
    """The filters among a query string's ``params``: every parameter not in ``reserved``. A parameter given
    twice is refused, a filter's or a reserved one's (``limit=1&limit=2``: no value silently wins)."""
    reserved = set(reserved)
    filters: dict[str, Any] = {}
    seen: set[str] = set()
    for column, text in params:
        if column in reserved:
            if column in seen:
                raise InvalidInputError(f"parameter {column!r} is given twice; give it once")
            seen.add(column)
            continue
        if column in filters:
            raise InvalidInputError(f"filter column {column!r} is given twice; give each column once"
                                    " (POST /api/v1/search takes several operators on one column)")
        filters[column] = parse_value(column, text)
    return filters


def from_body(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A POST body's ``filters``: pg_vectorize's ``"op.value"`` strings read by its grammar, the rest as is."""
    if not filters:
        return None
    return {column: parse_value(column, spec) if isinstance(spec, str) and _OWN_OPERATOR.match(spec) else spec
            for column, spec in filters.items()}
