"""One error hierarchy, rooted in AirflowException, so a failed task says what to fix."""

from __future__ import annotations

from airflow.exceptions import AirflowException


class VectorizeError(AirflowException):
    """Base class of every error raised by airflow-vectorize."""


class ProjectNotFoundError(VectorizeError):
    """The named project has no entry in the ``vectorize.job`` catalog."""


class DatabaseConnectionError(VectorizeError):
    """The session with PostgreSQL ended under a call (terminated, server restarted, network lost); what was
    committed before is kept, and running the call again resumes."""


class DatabasePermissionError(VectorizeError):
    """The database role of the connection lacks a privilege the call needs (PostgreSQL's "permission denied");
    nothing was written."""


class ProjectConflictError(VectorizeError):
    """A project of that name exists with a different configuration."""


class SourceTableMissingError(ProjectConflictError):
    """The project's source table no longer exists (dropped, or renamed away)."""


class SourceColumnsMissingError(ProjectConflictError):
    """A column the project reads (key, text, update column, an append project's own) is gone from its source
    table: renamed or dropped."""


class InvalidInputError(VectorizeError, ValueError):
    """An argument or the data it points at is unusable; nothing was written."""


class SourceNotFoundError(InvalidInputError):
    """A table named as a source does not exist, or a source's update column (HTTP 404, as pg_vectorize's
    server answers "schema, table or column NOT FOUND")."""


class DimensionMismatchError(InvalidInputError):
    """Embeddings whose dimension differs from the project's vector size."""


class ModelError(VectorizeError):
    """An embedding or chat model could not be reached or used; the message names connection and model."""


class ModelConnectionError(ModelError):
    """The Airflow connection is missing or malformed, or its host cannot be reached."""


class ModelAuthenticationError(ModelError):
    """The server refused the credentials of the connection (HTTP 401/403)."""


class ModelNotFoundError(ModelError):
    """The server does not know the model (HTTP 404)."""


class ModelRequestError(ModelError):
    """The server kept failing (429, 5xx, timeouts) past the retries, or rejected the request."""


class ModelRateLimitError(ModelRequestError):
    """The server kept answering 429 past the retries, or asked (``Retry-After``) to wait longer than the
    connection waits (its extra ``max_retry_after``)."""


class ModelTimeoutError(ModelRequestError):
    """The server did not answer in time, past the retries."""


class ModelInputRejectedError(ModelRequestError):
    """The server rejected the request's inputs (HTTP 400, 413, 422): an input it will never accept (too
    long, malformed). Generation finds and records the offending rows instead of failing the run."""


class EmbeddingFailuresError(VectorizeError):
    """More rows than allowed could not be embedded in a run (the rows that could are written)."""


class ModelResponseError(ModelError):
    """The server answered with something unusable: malformed JSON, wrong number of vectors, wrong size."""


class RetrievalRegressionError(VectorizeError):
    """An evaluation fell below a threshold, or dropped too far from the last run (``EvaluateRetrievalOperator``).
    ``summary``: what ``evaluate_retrieval`` would have returned."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}
