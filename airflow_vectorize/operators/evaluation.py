"""A regression gate for retrieval quality: evaluate a project and fail the task when it got worse."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_vectorize import evaluation
from airflow_vectorize.assets import evaluation_asset
from airflow_vectorize.exceptions import InvalidInputError, RetrievalRegressionError
from airflow_vectorize.operators._base import ProjectWriterOperator


class EvaluateRetrievalOperator(ProjectWriterOperator):
    """Evaluate a project's search on labelled queries (``VectorizeHook.evaluate_retrieval``) and gate on it.

    The task fails (RetrievalRegressionError, naming each failure) when a metric is below ``min_metrics``
    or worse than the last kept run that passed by more than ``max_drop``, so that a re-embedding or a model
    change that hurts retrieval stops the DAG before its consumers run. The run is kept in
    ``vectorize.evaluations`` either way. On success it emits the project's ``evaluation_asset`` with the
    metrics in the event's ``extra`` and returns the summary to XCom.

    :param job_name: the project.
    :param queries: labelled queries ``[{"query": text, "relevant": [key, ...]}]``, or the name of a table
        or view holding them (a ``query`` column, the key column(s), an optional ``grade``); None: ``sample``
        queries made from the project's own rows (``VectorizeHook.sample_queries`` with ``seed`` and
        ``position``) — a proxy, stable from run to run while the rows are.
    :param k: cut-offs of recall@k and precision@k; :param mode: ``vector`` or ``hybrid``.
    :param filters: search filters; :param ef_search: HNSW ``ef_search`` for the searches.
    :param min_metrics: ``{metric: bound}``, e.g. ``{"recall@10": 0.8}``.
    :param max_drop: ``{metric: allowed drop against the last good run}``, e.g. ``{"mrr": 0.02}``.
    :param query_set: the name runs are kept and compared under (the evaluation's ``label``; runs of other
        query sets are not compared with this one; None: runs without a query set are compared with each other).
    :param chart: draw recall@k of this run (and of the last good run it was compared with) as a PNG, also
        when the gate fails, at ``chart_path`` or by default next to the task's log
        (``<base_log_folder>/dag_id=…/run_id=…/task_id=…/retrieval-<evaluation_id>.png``, the directory of
        Airflow's default log file name); its path is logged and returned as ``chart``. Needs matplotlib
        (without it: a log line, no chart).
    """

    asset = staticmethod(evaluation_asset)
    template_fields: Sequence[str] = ("job_name", "queries", "filters", "query_set", "min_metrics", "max_drop",
                                      "chart_path")

    def __init__(
        self,
        *,
        job_name: str,
        queries: list[dict[str, Any]] | str | None = None,
        sample: int = 100,
        seed: int = 0,
        position: str = "any",
        k: int | Sequence[int] = (1, 5, 10),
        mode: str = "vector",
        filters: dict[str, Any] | None = None,
        ef_search: int | None = None,
        min_metrics: dict[str, float] | None = None,
        max_drop: dict[str, float] | None = None,
        query_set: str | None = None,
        chart: bool = True,
        chart_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_name=job_name, **kwargs)
        self.queries = queries
        self.sample = sample
        self.seed = seed
        self.position = position
        self.k = k
        self.mode = mode
        self.filters = filters
        self.ef_search = ef_search
        self.min_metrics = min_metrics
        self.max_drop = max_drop
        self.query_set = query_set
        self.chart = chart
        self.chart_path = chart_path

    def execute(self, context: Any) -> dict[str, Any]:
        queries = self.queries if self.queries is not None else self.sampled()
        tables = self.hook.project_tables(self.job_name)
        try:
            summary = self.hook.evaluate_retrieval(
                self.job_name, queries, k=self.k, mode=self.mode, filters=self.filters, ef_search=self.ef_search,
                label=self.query_set, min_metrics=self.min_metrics, max_drop=self.max_drop)
        except RetrievalRegressionError as error:
            self.draw(context, error.summary)
            raise
        finally:  # also when the gate fails: the run was kept
            self.capture_tables(inputs=[tables["source"], tables["storage"]],
                                outputs=[("vectorize", "evaluations")])
        self.log.info("Retrieval of %r: %s", self.job_name, summary["metrics"])
        self.draw(context, summary)
        return self.emit(context, summary, ("evaluation_id",), extra=summary["metrics"])

    def sampled(self) -> list[dict[str, Any]]:
        """``sample`` labelled queries from the project's rows; InvalidInputError when none could be made."""
        queries = self.hook.sample_queries(self.job_name, self.sample, self.seed, self.position)
        if not queries:
            raise InvalidInputError(
                f"no query could be sampled from project {self.job_name!r} (sample={self.sample!r}): none of its"
                f" rows holds a sentence of {evaluation.MIN_WORDS}-{evaluation.MAX_WORDS} words (short texts such as"
                " names or titles have none). Pass queries= (labelled queries, or a table of them)"
            )
        return queries

    def draw(self, context: Any, summary: dict[str, Any]) -> None:
        """The recall@k chart of ``summary`` (and of the run it was compared with), when ``chart``."""
        if not self.chart or "evaluation_id" not in summary:
            return
        if importlib.util.find_spec("matplotlib") is None:
            self.log.info("No recall@k chart: matplotlib is not installed")
            return
        path = Path(self.chart_path) if self.chart_path else log_directory(context["ti"]) / \
            f"retrieval-{summary['evaluation_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = {f"this run #{summary['evaluation_id']}": summary["metrics"]}
        previous = summary.get("gate", {}).get("previous")
        if previous:
            runs[f"last good run #{previous['evaluation_id']}"] = previous["metrics"]
        summary["chart"] = evaluation.chart(str(path), runs, f"{self.job_name}: recall@k")
        self.log.info("Recall@k chart: %s", path)


def log_directory(ti: Any) -> Path:
    """Where the task's log files are, by Airflow's default ``log_filename_template``."""
    from airflow.configuration import conf

    parts = [f"dag_id={ti.dag_id}", f"run_id={ti.run_id}", f"task_id={ti.task_id}"]
    if getattr(ti, "map_index", -1) >= 0:
        parts.append(f"map_index={ti.map_index}")
    return Path(conf.get("logging", "base_log_folder")).joinpath(*parts)
