"""Time the phases of ``VectorizeHook.import_embeddings`` from the outside, without changing what it runs.

The hook calls ``validation.check_import_source``, ``validation.check_import_rows``,
``storage.import_from_table``, ``storage.write_documents``, ``storage.clear_pending`` and, after the write
commits, ``storage.build_index`` as module attributes; wrapping those attributes records how long each took.

``skip_index_build=True`` turns the HNSW build after the write into a no-op: the import then runs exactly
as in production up to the build (the index is dropped before the write as usual), which is how the
benchmark measures an import "with no vector index on either side".
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow_vectorize import storage, validation

PHASES: dict[str, tuple[Any, str]] = {
    "validate_source": (validation, "check_import_source"),
    "validate_rows": (validation, "check_import_rows"),
    "write": (storage, "import_from_table"),
    "documents": (storage, "write_documents"),
    "clear_pending": (storage, "clear_pending"),
    "index_build": (storage, "build_index"),
}


@contextmanager
def import_phases(skip_index_build: bool = False) -> Iterator[dict[str, float]]:
    """Yields a dict phase -> seconds, filled while the block runs."""
    seconds: dict[str, float] = defaultdict(float)
    originals: dict[str, Callable[..., Any]] = {}

    def wrap(phase: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if phase == "index_build" and skip_index_build:
                seconds["index_build_skipped"] += 1
                return None
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - started
        return timed

    for phase, (module, name) in PHASES.items():
        originals[phase] = getattr(module, name)
        setattr(module, name, wrap(phase, originals[phase]))
    try:
        yield seconds
    finally:
        for phase, (module, name) in PHASES.items():
            setattr(module, name, originals[phase])
