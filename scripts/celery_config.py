"""Celery configuration of the real deployment (``[celery] celery_config_options``): Airflow's default, plus
``imports`` of the modules named in ``VECTORIZE_CELERY_PRELOAD`` (comma-separated).

Celery imports them in each worker's main process before it forks its pool, so a task process (forked in
turn by the pool process) starts with e.g. sentence-transformers already imported instead of spending
5-15 s of CPU importing it. See scripts/deployment.py.
"""

from __future__ import annotations

import os

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

PRELOAD = [m.strip() for m in os.environ.get("VECTORIZE_CELERY_PRELOAD", "").split(",") if m.strip()]
CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG, "imports": [*DEFAULT_CELERY_CONFIG.get("imports", ()), *PRELOAD]}
