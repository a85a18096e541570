"""One error hierarchy, rooted in AirflowException, so a failed task says what to fix."""

from __future__ import annotations

from airflow.exceptions import AirflowException


class VectorizeError(AirflowException):
    """Base class of every error raised by airflow-vectorize."""


class ProjectNotFoundError(VectorizeError):
    """The named project has no entry in the ``vectorize.job`` catalog."""


class ProjectConflictError(VectorizeError):
    """A project of that name exists with a different configuration."""


class InvalidInputError(VectorizeError, ValueError):
    """An argument or the data it points at is unusable; nothing was written."""


class DimensionMismatchError(InvalidInputError):
    """Embeddings whose dimension differs from the project's vector size."""
