"""HTTP API for applications: pg_vectorize's server routes and ours over ``VectorizeHook``, served by
Airflow's api-server (``/vectorize``, Airflow's authentication) or standalone (bearer tokens).

See ``airflow_vectorize.api.app`` for the two ways to run it and ``airflow_vectorize.api.routes`` for the routes.
"""
