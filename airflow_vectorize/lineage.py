"""OpenLineage datasets of the operators' reads and writes (used when apache-airflow-providers-openlineage
is installed).

Datasets follow OpenLineage's naming for PostgreSQL: namespace ``postgres://<host>:<port>``, name
``<database>.<schema>.<table>``, each with a schema facet (columns and types, read from ``pg_catalog`` while
the task ran). A dropped table carries a lifecycle facet ``DROP``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_vectorize.hooks.vectorize import VectorizeHook

Table = tuple[str, str]  # (schema, table)


def openlineage_installed() -> bool:
    return importlib.util.find_spec("airflow.providers.openlineage") is not None


@dataclass
class TaskTables:
    """The tables a task read (``inputs``), wrote (``outputs``) and dropped, with their columns."""

    inputs: list[tuple[Table, list[tuple[str, str]]]] = field(default_factory=list)
    outputs: list[tuple[Table, list[tuple[str, str]]]] = field(default_factory=list)
    dropped: list[tuple[Table, list[tuple[str, str]]]] = field(default_factory=list)

    @classmethod
    def capture(cls, hook: VectorizeHook, inputs: list[Table] = (), outputs: list[Table] = (),
                dropped: list[Table] = ()) -> TaskTables:
        def columns(tables: list[Table]) -> list[tuple[Table, list[tuple[str, str]]]]:
            return [(table, hook.table_columns(*table)) for table in dict.fromkeys(tables)]

        return cls(columns(inputs), columns(outputs), columns(dropped))


def operator_lineage(hook: VectorizeHook, tables: TaskTables | None) -> Any:
    """An ``OperatorLineage`` with the task's input and output datasets (empty when nothing was captured)."""
    from airflow.providers.common.compat.openlineage.facet import (
        Dataset,
        LifecycleStateChange,
        LifecycleStateChangeDatasetFacet,
        SchemaDatasetFacet,
        SchemaDatasetFacetFields,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    if tables is None:
        return OperatorLineage()
    info = hook.get_openlineage_database_info(hook.connection)
    namespace = f"{info.scheme}://{info.authority}"

    def dataset(table: Table, columns: list[tuple[str, str]], dropped: bool = False) -> Dataset:
        facets: dict[str, Any] = {}
        if columns:
            facets["schema"] = SchemaDatasetFacet(
                fields=[SchemaDatasetFacetFields(name=name, type=type_) for name, type_ in columns])
        if dropped:
            facets["lifecycleStateChange"] = LifecycleStateChangeDatasetFacet(
                lifecycleStateChange=LifecycleStateChange.DROP)
        return Dataset(namespace=namespace, name=f"{info.database}.{table[0]}.{table[1]}", facets=facets)

    return OperatorLineage(
        inputs=[dataset(table, columns) for table, columns in tables.inputs],
        outputs=[dataset(table, columns) for table, columns in tables.outputs]
        + [dataset(table, columns, dropped=True) for table, columns in tables.dropped],
    )
