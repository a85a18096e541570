"""The Airflow plugin: the Vectorize API in Airflow's api-server, and the Vectorize page in its UI.

Registered with the ``airflow.plugins`` entry point, so an installed package is all it takes:
``/vectorize/api/v1/...`` (Airflow's JWT, see ``airflow_vectorize.api.auth``) and a "Vectorize" entry in the
UI's navigation that shows ``/vectorize/ui`` (the UI session's cookie).
"""

from __future__ import annotations

from functools import cached_property

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/vectorize"


class VectorizePlugin(AirflowPlugin):
    name = "vectorize"

    @cached_property
    def fastapi_apps(self) -> list[dict]:  # built when the api-server asks, not at every import
        from airflow_vectorize.api.app import airflow_app

        return [{"app": airflow_app(), "url_prefix": URL_PREFIX, "name": "Vectorize API"}]

    external_views = [
        {
            "name": "Vectorize",
            "href": f"{URL_PREFIX}/ui",
            "destination": "nav",
            "url_route": "vectorize",
            "category": "browse",
        }
    ]
