"""A standalone server's warm-up: at its start, one search in each project it serves whose model is computed
in the server, so that no application's first request waits while the model loads (all-MiniLM-L6-v2: ≈ 5 s
on 2 cores) and the search sessions are open and their statements built.

It runs in threads of its own, one per connection: the server answers at once (a search that comes first
waits for the model as before) and ``GET /health`` says how far it got (``warm_up``). A project whose model is remote (a
provider's, or a self-hosted server's) is not searched: a search would send its provider a request.
``VECTORIZE_API_WARM_UP=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_vectorize import models
from airflow_vectorize.api.pool import Hooks

log = logging.getLogger(__name__)

QUERY = "warm-up"


@dataclass
class WarmUp:
    """What the warm-up did: ``state`` off, running or done; the projects searched (``conn_id/job_name``), those
    skipped for their remote model, the errors (a connection that could not be read, a project that could not
    be searched: the server serves on, and such a request gets the error then)."""

    state: str = "off"
    searched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float | None = None

    def start(self, hooks: Hooks, conn_ids: Iterable[str]) -> list[threading.Thread]:
        """A thread per connection (one whose database does not answer holds up no other); ``state`` is done
        when the last one ends."""
        conn_ids = sorted(conn_ids)
        self.state, started, left, lock = "running", time.monotonic(), len(conn_ids), threading.Lock()

        def run(conn_id: str) -> None:
            nonlocal left
            try:
                self._warm(hooks, conn_id)
            finally:
                with lock:
                    left -= 1
                    if not left:
                        self._done(started)

        threads = [threading.Thread(target=run, args=(conn_id,), name=f"vectorize-warm-up-{conn_id}", daemon=True)
                   for conn_id in conn_ids]
        if not threads:
            self._done(started)
        for thread in threads:
            thread.start()
        return threads

    def _done(self, started: float) -> None:
        self.seconds = round(time.monotonic() - started, 3)
        self.state = "done"
        log.info("Warm-up done in %.1f s: %d project(s) searched, %d skipped (remote model), %d error(s)",
                 self.seconds, len(self.searched), len(self.skipped), len(self.errors))

    def _warm(self, hooks: Hooks, conn_id: str) -> None:
        try:
            hook = hooks.get(conn_id)
            projects = hook.list_projects()
        except Exception as error:  # noqa: BLE001 - reported; the server serves on
            self._failed(conn_id, error)
            return
        for project in projects:
            name = f"{conn_id}/{project['name']}"
            if not computed_here(project):
                self.skipped.append(name)
                continue
            try:
                hook.search(project["name"], QUERY, num_results=1)
            except Exception as error:  # noqa: BLE001 - reported; the server serves on
                self._failed(name, error)
                continue
            self.searched.append(name)

    def _failed(self, what: str, error: Exception) -> None:
        message = f"{what}: {type(error).__name__}: {str(error).strip()[:300]}"
        self.errors.append(message)
        log.warning("Warm-up: %s", message)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def computed_here(project: dict[str, Any]) -> bool:
    """Whether the model of a project (its catalog entry) runs in this process."""
    return models.model_conn_id(project["transformer"], project["params"].get("model_conn_id")) is None


def enabled(env: dict[str, str] | None = None) -> bool:
    """``VECTORIZE_API_WARM_UP``: on unless ``0`` (or ``false``, ``no``, ``off``)."""
    value = (os.environ if env is None else env).get("VECTORIZE_API_WARM_UP", "1")
    return value.strip().lower() not in ("0", "false", "no", "off")
