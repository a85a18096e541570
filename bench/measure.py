"""A measurement is a ratio of two things measured side by side in the same run, with its target."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurement:
    """``ours`` and ``baseline`` in ``unit``, ``ratio = ours / baseline``; the target: ``ratio <op> target``."""

    key: str
    title: str
    ours_label: str
    baseline_label: str
    unit: str
    ours: float | None = None
    baseline: float | None = None
    target: float | None = None
    op: str = "<="  # "<=" or ">="; how the ratio must compare with the target
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None or not math.isfinite(ratio):
            return None
        return ratio <= self.target if self.op == "<=" else ratio >= self.target

    @property
    def status(self) -> str:
        if self.met is None:
            return "info" if self.ratio is not None else "failed"
        return "met" if self.met else "MISSED"

    @property
    def target_text(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.target:g}" if self.target is not None else "—"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, met=self.met, status=self.status, target_text=self.target_text)
        return data


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as elapsed: ...`` then ``elapsed[0]`` holds the seconds taken."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Searched:
    """What ``while_searching`` saw: the action's result and seconds, each search's seconds, the errors."""

    result: Any
    seconds: float
    latencies: list[float]
    errors: list[str]


def while_searching(search: Callable[[int], Any], action: Callable[[], Any]) -> Searched:
    """Run ``action`` while a thread calls ``search(i)`` (i = 0, 1, ...) in a loop until it returns."""
    import threading

    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            began = time.perf_counter()
            try:
                search(i)
            except Exception as error:  # noqa: BLE001 - reported
                errors.append(f"{type(error).__name__}: {error}")
            latencies.append(time.perf_counter() - began)
            i += 1

    thread = threading.Thread(target=loop, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        result = action()
    finally:
        seconds = time.perf_counter() - started
        stop.set()
        thread.join()
    return Searched(result, seconds, latencies, errors)
