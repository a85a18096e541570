"""Triggers of the Vectorize provider: queued rows (for an AssetWatcher) and freshness (for the sensor)."""

from airflow_vectorize.triggers.freshness import FreshnessTrigger
from airflow_vectorize.triggers.pending import PendingRowsTrigger

__all__ = ["FreshnessTrigger", "PendingRowsTrigger"]
