"""A project's key: one column, as pg_vectorize's ``primary_key``, or several (a composite primary key) —
the SQL that names, compares and binds it.

In Python a key value is the column's value for a one-column key and a tuple for a composite one. A list
of one-column keys is bound as an array (``= ANY(%s)``, typed by psycopg); a list of composite keys as
JSON read into the source table's own row type (``jsonb_populate_recordset(<a row of the source>, %s)``), so
that every column gets exactly its type whatever it is (the other columns take that row's values: NULL would
break a NOT NULL domain) (an array per column would be typed from the Python
values: ``text`` for a ``varchar`` or an enum).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql


@dataclass(frozen=True)
class Key:
    """The key's column names, in the order of the project's ``primary_key``."""

    columns: tuple[str, ...]

    @property
    def composite(self) -> bool:
        return len(self.columns) > 1

    def aliases(self, prefix: str = "k") -> Key:
        """Names for the key's columns in a subquery: ``k`` for one column, ``k0``, ``k1``, ... for several
        (a source column may be called ``d`` or ``rank``)."""
        return Key((prefix,) if not self.composite else tuple(f"{prefix}{i}" for i in range(len(self.columns))))

    def names(self, alias: str | None = None) -> sql.Composable:
        """``alias.c1, alias.c2``."""
        return sql.SQL(", ").join(_column(alias, c) for c in self.columns)

    def select_as(self, alias: str | None, names: Key) -> sql.Composable:
        """``alias.c1 AS n1, alias.c2 AS n2``."""
        return sql.SQL(", ").join(sql.SQL("{} AS {}").format(_column(alias, c), sql.Identifier(n))
                                  for c, n in zip(self.columns, names.columns))

    def equals(self, left: str | None, right: str | None, other: Key | None = None) -> sql.Composable:
        """``left.c1 = right.o1 AND ...`` (``other``: the right side's names, by default the same)."""
        pairs = zip(self.columns, (other or self).columns)
        return sql.SQL(" AND ").join(sql.SQL("{} = {}").format(_column(left, a), _column(right, b)) for a, b in pairs)

    def any_null(self, alias: str | None) -> sql.Composable:
        return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(_column(alias, c)) for c in self.columns)

    def as_text(self, alias: str | None) -> sql.Composable:
        """The key as text: ``alias.c::text``, or the row ``(v1,v2)`` for a composite key (hash partitions,
        advisory locks, the sample keys of error messages)."""
        if not self.composite:
            return sql.SQL("{}::text").format(_column(alias, self.columns[0]))
        return sql.SQL("ROW({})::text").format(self.names(alias))

    def in_values(self, alias: str | None, source: sql.Composable) -> sql.Composable:
        """A condition with one placeholder: the key of ``alias`` is one of the keys bound by ``bind``;
        ``source``: the source table, whose row type gives a composite key's columns their types."""
        if not self.composite:
            return sql.SQL("{} = ANY(%s)").format(_column(alias, self.columns[0]))
        return sql.SQL("({}) IN (SELECT {} FROM jsonb_populate_recordset({}, %s::jsonb) x)").format(
            self.names(alias), self.names("x"), base_row(source))

    def bind(self, keys: Iterable[Any]) -> Any:
        """The value of ``in_values``'s placeholder for ``keys``."""
        if not self.composite:
            return list(keys)
        return json.dumps([dict(zip(self.columns, key)) for key in keys], default=str)

    def value(self, row: Sequence[Any], start: int = 0) -> Any:
        """The key held by ``row`` from position ``start`` on."""
        return tuple(row[start:start + len(self.columns)]) if self.composite else row[start]

    def flat(self, key: Any) -> tuple[Any, ...]:
        """A key value as one value per column."""
        return tuple(key) if self.composite else (key,)

    def from_mapping(self, row: dict[str, Any]) -> Any:
        """The key of a result row (a dict by column name)."""
        return tuple(row[c] for c in self.columns) if self.composite else row[self.columns[0]]


def _column(alias: str | None, column: str) -> sql.Identifier:
    return sql.Identifier(alias, column) if alias else sql.Identifier(column)


def base_row(source: sql.Composable) -> sql.Composable:
    """A row of ``source`` (NULL of its type when it has none) for ``jsonb_populate_record(set)`` to take the
    columns a key leaves out from: NULL::<source> would give them NULL, which a NOT NULL domain refuses.
    ``ROW(b.*)``: the source may have a column named as the alias."""
    return sql.SQL("coalesce((SELECT ROW(b.*)::{} FROM {} b LIMIT 1), NULL::{})").format(source, source, source)
