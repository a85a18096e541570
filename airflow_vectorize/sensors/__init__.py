"""Sensors of the Vectorize provider."""

from airflow_vectorize.sensors.freshness import VectorizeFreshnessSensor

__all__ = ["VectorizeFreshnessSensor"]
