"""Benchmarks of airflow-vectorize: every figure is a ratio of two things measured side by side in one run.

Run ``make bench`` (``python -m bench``; ``--help`` for the sizes). See bench/README.md.
"""
