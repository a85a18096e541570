"""Airflow provider registration (the ``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from airflow_vectorize import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-vectorize",
        "name": "Vectorize",
        "description": "Vector-search projects (pg_vectorize's API) on PostgreSQL + pgvector.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Vectorize",
                "external-doc-url": "https://github.com/tembo-io/pg_vectorize",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {"integration-name": "Vectorize", "python-modules": ["airflow_vectorize.hooks.vectorize"]}
        ],
        "operators": [
            {
                "integration-name": "Vectorize",
                "python-modules": [
                    "airflow_vectorize.operators.project",
                    "airflow_vectorize.operators.embeddings",
                    "airflow_vectorize.operators.search",
                    "airflow_vectorize.operators.rag",
                    "airflow_vectorize.operators.evaluation",
                ],
            }
        ],
        "sensors": [
            {"integration-name": "Vectorize", "python-modules": ["airflow_vectorize.sensors.freshness"]}
        ],
        "triggers": [
            {
                "integration-name": "Vectorize",
                "python-modules": ["airflow_vectorize.triggers.pending", "airflow_vectorize.triggers.freshness"],
            }
        ],
    }
