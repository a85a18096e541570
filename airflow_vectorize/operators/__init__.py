"""Operators of the Vectorize provider: thin wrappers around VectorizeHook."""

from airflow_vectorize.operators.embeddings import GenerateEmbeddingsOperator, ImportEmbeddingsOperator
from airflow_vectorize.operators.evaluation import EvaluateRetrievalOperator
from airflow_vectorize.operators.project import (
    AlterVectorizeProjectOperator,
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
)
from airflow_vectorize.operators.rag import GenerateTextOperator, RAGOperator
from airflow_vectorize.operators.search import VectorSearchOperator

__all__ = [
    "AlterVectorizeProjectOperator",
    "CreateVectorizeProjectOperator",
    "DropVectorizeProjectOperator",
    "EvaluateRetrievalOperator",
    "GenerateEmbeddingsOperator",
    "GenerateTextOperator",
    "ImportEmbeddingsOperator",
    "RAGOperator",
    "VectorSearchOperator",
]
