"""pg_vectorize's vector-search projects as an Apache Airflow provider, on any PostgreSQL with pgvector."""

__version__ = "0.1.0"
