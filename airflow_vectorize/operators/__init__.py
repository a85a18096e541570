"""Operators of the Vectorize provider: thin wrappers around VectorizeHook."""

from airflow_vectorize.operators.embeddings import ImportEmbeddingsOperator
from airflow_vectorize.operators.project import CreateVectorizeProjectOperator, DropVectorizeProjectOperator

__all__ = ["CreateVectorizeProjectOperator", "DropVectorizeProjectOperator", "ImportEmbeddingsOperator"]
