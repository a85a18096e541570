"""Search a project from a DAG; the rows go to XCom as JSON (no vectors)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from airflow_vectorize.operators._base import VectorizeBaseOperator, listed


class VectorSearchOperator(VectorizeBaseOperator):
    """Vector (or hybrid) search over a project (pg_vectorize's ``vectorize.search`` / ``hybrid_search``).

    :param job_name: the project to search.
    :param query: the text to search for (embedded with the project's model).
    :param return_columns: source columns to return; default all (never embeddings).
    :param num_results: the maximum number of rows.
    :param filters: ``{column: value}`` or ``{column: {op: value}}``, op one of eq, ne, gt, gte, lt, lte, in.
    :param hybrid: fuse vector and full-text results by reciprocal rank (``VectorizeHook.hybrid_search``).
    """

    template_fields: Sequence[str] = ("job_name", "query", "filters", "return_columns")

    def __init__(
        self,
        *,
        job_name: str,
        query: str,
        return_columns: Sequence[str] | None = None,
        num_results: int = 10,
        filters: dict[str, Any] | None = None,
        hybrid: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.query = query
        self.return_columns = return_columns
        self.num_results = num_results
        self.filters = filters
        self.hybrid = hybrid

    def execute(self, context: Any) -> list[dict[str, Any]]:
        method = self.hook.hybrid_search if self.hybrid else self.hook.search
        rows = method(
            self.job_name,
            self.query,
            return_columns=listed(self.return_columns),
            num_results=self.num_results,
            filters=self.filters,
        )
        self.log.info("Search in project %r returned %d row(s)", self.job_name, len(rows))
        return [{key: to_json(value) for key, value in row.items()} for row in rows[: self.num_results]]


def to_json(value: Any) -> Any:
    """A JSON-serialisable form of a database value (Decimal -> float, or its text where a float would change
    it, e.g. a numeric key; NaN and ±Infinity -> None, as strict JSON has none; dates and times -> ISO strings)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        number = float(value)
        return number if Decimal(repr(number)) == value else str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)  # UUID, inet, ranges, ...
