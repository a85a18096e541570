"""Hooks of the Vectorize provider."""
