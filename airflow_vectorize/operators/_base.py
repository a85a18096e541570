"""What every Vectorize operator shares: the connection id, a cached hook, the project's Asset outlet."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airflow_vectorize import index_build
from airflow_vectorize.assets import embeddings_asset
from airflow_vectorize.hooks.vectorize import VectorizeHook
from airflow_vectorize.lineage import Table, TaskTables, openlineage_installed, operator_lineage


class VectorizeBaseOperator(BaseOperator):
    """Base for operators that call one VectorizeHook method and return its summary to XCom.

    :param postgres_conn_id: the Airflow connection to PostgreSQL with pgvector.
    :param index_build_memory: the most ``maintenance_work_mem`` an HNSW build of this task may ask for
        (``VectorizeHook``'s: ``"auto"``, 4 GB, or a size such as ``"16GB"``).
    """

    def __init__(self, *, postgres_conn_id: str = VectorizeHook.default_conn_name,
                 index_build_memory: str = index_build.AUTO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.postgres_conn_id = postgres_conn_id
        self.index_build_memory = index_build_memory
        index_build.parse_cap(index_build_memory)  # a bad size fails the DAG file, not the run
        self.tables: TaskTables | None = None

    @cached_property
    def hook(self) -> VectorizeHook:
        return VectorizeHook(postgres_conn_id=self.postgres_conn_id, index_build_memory=self.index_build_memory)

    def capture_tables(self, inputs: list[Table] = (), outputs: list[Table] = (), dropped: list[Table] = ()) -> None:
        """Note the tables this task read, wrote and dropped, with their columns, for OpenLineage (only
        when its provider is installed)."""
        if openlineage_installed():
            self.tables = TaskTables.capture(self.hook, inputs, outputs, dropped)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input and output datasets (with schema facets) of the tables noted by ``capture_tables``."""
        return operator_lineage(self.hook, self.tables)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """The same for a failed task: those it noted before it failed (a run that wrote some rows)."""
        return operator_lineage(self.hook, self.tables)


class ProjectWriterOperator(VectorizeBaseOperator):
    """An operator that writes something of a project: it emits the project's ``asset`` (by default its
    ``embeddings_asset``) as an outlet (unless ``outlets`` are given, or ``job_name`` is a template or an
    upstream task's XCom, unknown when the DAG is parsed), with the task's figures as the event's ``extra``, so
    downstream DAGs can be scheduled on fresh embeddings (or a passed evaluation). Its connection is the task's
    ``postgres_conn_id``, from ``default_args`` too; mapped tasks (``partial().expand()``) declare it as well."""

    asset = staticmethod(embeddings_asset)  # (job_name, postgres_conn_id) -> Asset

    def __init__(self, *, job_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # postgres_conn_id from default_args is known only after this
        self.job_name = job_name
        if not self.outlets and _known(job_name):
            self.outlets = [self.asset(job_name, self.postgres_conn_id)]

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """``BaseOperator.partial``, with the project's asset declared: a mapped task's outlets are those given
        here (Airflow passes ``outlets=[]`` when none are)."""
        if not kwargs.get("outlets") and _known(job_name := kwargs.get("job_name")):
            kwargs["outlets"] = [cls.asset(job_name, kwargs.get("postgres_conn_id") or _dag_default_conn_id(kwargs))]
        return super().partial(**kwargs)

    def emit(self, context: Any, summary: dict[str, Any], counts: tuple[str, ...] = (),
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Put ``counts`` of the summary (and ``extra``) on the project asset's event; return the summary."""
        asset = self.asset(self.job_name, self.postgres_conn_id)
        if "outlet_events" in context and any(getattr(o, "uri", None) == asset.uri for o in self.outlets):
            context["outlet_events"][asset].extra.update(
                {"job_name": self.job_name, "task": self.task_id, **{k: summary[k] for k in counts}, **(extra or {})})
        return summary


def _known(job_name: Any) -> bool:
    """Whether a project name is known when the DAG is parsed (not a template, nor an XComArg)."""
    return isinstance(job_name, str) and "{{" not in job_name


def _dag_default_conn_id(kwargs: dict[str, Any]) -> str:
    """The ``postgres_conn_id`` a mapped task gets from ``default_args``, merged as ``BaseOperator.partial``
    merges them: its DAG's (the DAG given or the one being defined), its TaskGroup's (the one given or the one
    being defined, with those of the groups around it), its own; else the hook's default."""
    from airflow.sdk.bases.operator import get_merged_defaults
    from airflow.sdk.definitions._internal.contextmanager import DagContext, TaskGroupContext

    dag = kwargs.get("dag") or DagContext.get_current()
    group = kwargs.get("task_group") or (TaskGroupContext.get_current(dag) if dag else None)
    merged, _ = get_merged_defaults(dag, group, None, kwargs.get("default_args"))
    return merged.get("postgres_conn_id", VectorizeHook.default_conn_name)


def run_start(context: Any) -> Any:
    """The DAG run's start: rows first failing since count as new failures, in this try and in its retries."""
    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    return getattr(dag_run, "start_date", None)


def listed(columns: Any) -> Any:
    """A rendered tuple of columns as a list; anything else as it is, for the hook to judge (a string is not
    split into its letters)."""
    return list(columns) if isinstance(columns, tuple) else columns
