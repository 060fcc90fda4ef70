"""Prometheus text-format metrics (no client library: four metric families do not justify one).

Names follow TF Serving's exported metrics, e.g. `:tensorflow:serving:request_count`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Latency in microseconds, like TF Serving.
LATENCY_BUCKETS_US: Final = tuple(10.0 * 1.8**i for i in range(33))
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"] + [
            f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in items
        ]


class Histogram:
    def __init__(self, name: str, help_: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            series = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        for labels, (counts, total) in series:
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_fmt_labels(labels, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_fmt_labels(labels)} {_num(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(labels)} {cumulative}")
        return lines


class Gauge:
    """Read from a callback at scrape time, so it can never drift from the registry's state."""

    def __init__(self, name: str, help_: str, read: Callable[[], dict[Labels, float]]) -> None:
        self.name, self.help, self._read = name, help_, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"] + [
            f"{self.name}{_fmt_labels(k)} {_num(v)}" for k, v in sorted(self._read().items())
        ]


class Metrics:
    def __init__(self, loaded_versions: Callable[[], dict[Labels, float]]) -> None:
        self.request_count = Counter(":tensorflow:serving:request_count", "The total number of requests.")
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            LATENCY_BUCKETS_US,
        )
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Tracks the batch size distribution on processing.",
            BATCH_SIZE_BUCKETS,
        )
        self.loaded_versions = Gauge(
            ":tensorflow:serving:loaded_model_versions",
            "Model versions currently loaded (1 each).",
            loaded_versions,
        )

    def record_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        self.request_count.inc(model_name=model, status=status, API=api, entrypoint=entrypoint)
        self.request_latency.observe(seconds * 1e6, model_name=model, API=api, entrypoint=entrypoint)

    def render(self) -> str:
        families = (self.request_count, self.request_latency, self.batch_size, self.loaded_versions)
        return "\n".join(line for family in families for line in family.render()) + "\n"
