"""VectorizeFreshnessSensor: wait until a project's embeddings are fresh, in the triggerer by default."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator

from airflow_vectorize.exceptions import InvalidInputError, VectorizeError
from airflow_vectorize.freshness import Freshness
from airflow_vectorize.hooks.vectorize import VectorizeHook
from airflow_vectorize.triggers.freshness import FreshnessTrigger
from airflow_vectorize.validation import check_seconds


class VectorizeFreshnessSensor(BaseSensorOperator):
    """Wait until the project has at most ``max_pending`` queued rows, at most ``max_stale`` rows whose
    embedding is missing or out of date, and (when set) its oldest queued row is at most
    ``max_lag_seconds`` old. ``None`` leaves a condition out.

    Deferrable by default: after one check in the worker, the wait runs in the triggerer (one connection
    polling every ``poke_interval`` seconds) and holds no worker slot. Returns the last measurement
    (``pending``, ``stale``, ``lag_seconds``) to XCom. Deferred, a lost connection is opened again and the wait
    goes on; the project dropped, a database error or no connection at all fails the task (``VectorizeError``).

    :param job_name: the project to watch.
    :param postgres_conn_id: the Airflow connection to its database.
    :param deferrable: wait in the triggerer (True) or poke from the worker (False).
    """

    template_fields: Sequence[str] = ("job_name",)

    def __init__(self, *, job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name,
                 max_pending: int | None = 0, max_stale: int | None = 0, max_lag_seconds: float | None = None,
                 deferrable: bool = True, poke_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        check_seconds("poke_interval", self.poke_interval)  # as seconds (a timedelta is taken too)
        for name, value in (("max_pending", max_pending), ("max_stale", max_stale),
                            ("max_lag_seconds", max_lag_seconds)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise InvalidInputError(f"{name} must be a non-negative number or None, got {value!r}")
        if max_pending is None and max_stale is None and max_lag_seconds is None:
            raise InvalidInputError("VectorizeFreshnessSensor needs at least one of max_pending, max_stale,"
                                    " max_lag_seconds")
        self.job_name = job_name
        self.postgres_conn_id = postgres_conn_id
        self.max_pending = max_pending
        self.max_stale = max_stale
        self.max_lag_seconds = max_lag_seconds
        self.deferrable = deferrable
        self.last: dict[str, Any] | None = None

    @cached_property
    def hook(self) -> VectorizeHook:
        return VectorizeHook(postgres_conn_id=self.postgres_conn_id)

    def poke(self, context: Any) -> bool:
        self.last = self.hook.get_freshness(self.job_name)
        unmet = self._unmet(self.last)
        if unmet:
            self.log.info("Project %r not fresh yet: %s", self.job_name, ", ".join(unmet))
        return not unmet

    def execute(self, context: Any) -> dict[str, Any] | None:
        if not self.deferrable:
            super().execute(context)
            return self.last
        if self.poke(context):
            return self.last
        self.defer(
            trigger=FreshnessTrigger(self.job_name, self.postgres_conn_id, self.max_pending, self.max_stale,
                                     self.max_lag_seconds, poll_interval=self.poke_interval),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") != "fresh":
            raise VectorizeError(f"VectorizeFreshnessSensor: {event.get('message', event)}")
        self.log.info("Project %r is fresh: %s", self.job_name, event)
        return {k: v for k, v in event.items() if k != "status"}

    def _unmet(self, measured: dict[str, Any]) -> list[str]:
        state = Freshness(measured["pending"], measured["stale"], measured["lag_seconds"])
        return state.unmet(self.max_pending, self.max_stale, self.max_lag_seconds)
