"""Server-side batching: concurrent requests to one servable signature run as one model call.

A queue per (model, version, signature) collects tasks; a batch is closed when it holds
max_batch_size rows or its oldest task has waited batch_timeout_micros. num_batch_threads
workers run closed batches and hand each request its slice of the outputs. A batch that fails on
one request's data (INVALID_ARGUMENT) runs again request by request, so the others still get answers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chexstack.serve import inference
from chexstack.serve.config import BatchingParameters
from chexstack.serve.errors import Code, ServeError
from chexstack.serve.registry import Servable

Key = tuple[str, int, str, int]


@dataclass
class _Task:
    servable: Servable
    signature: str
    inputs: dict[str, np.ndarray]
    rows: int
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(
        self, params: BatchingParameters, on_batch: Callable[[str, int], None] | None = None
    ) -> None:
        self.params = params
        self._on_batch = on_batch or (lambda model, size: None)
        self._queues: dict[Key, deque[_Task]] = {}
        self._rows: dict[Key, int] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, servable: Servable, signature: str, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Blocks until the batch holding this request has run; inputs must be checked already."""
        signature = signature or inference.DEFAULT_SIGNATURE
        task = _Task(servable, signature, inputs, inference.batch_size(inputs))
        key = (servable.name, servable.version, signature, id(servable))
        limit = self.params.max_batch_size * self.params.max_enqueued_batches
        with self._cond:
            if self._stopping:
                raise ServeError(Code.UNAVAILABLE, "server is shutting down")
            if self._rows.get(key, 0) + task.rows > limit:
                raise ServeError(
                    Code.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full"
                )
            self._queues.setdefault(key, deque()).append(task)
            self._rows[key] = self._rows.get(key, 0) + task.rows
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # --- workers -----------------------------------------------------------------------

    def _next_batch(self) -> list[_Task] | None:
        timeout = self.params.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                now = time.monotonic()
                ready: list[tuple[float, Key]] = []
                wait: float | None = None
                for key, queue in self._queues.items():
                    if not queue:
                        continue
                    due = queue[0].enqueued + timeout
                    if self._stopping or self._rows[key] >= self.params.max_batch_size or due <= now:
                        ready.append((queue[0].enqueued, key))
                    else:
                        wait = due - now if wait is None else min(wait, due - now)
                if ready:
                    return self._take(min(ready)[1])
                if self._stopping:
                    return None
                self._cond.wait(wait)

    def _take(self, key: Key) -> list[_Task]:
        queue, rows = self._queues[key], 0
        batch: list[_Task] = []
        # A request larger than max_batch_size still runs, alone (TF Serving would reject or split it).
        while queue and (not batch or rows + queue[0].rows <= self.params.max_batch_size):
            task = queue.popleft()
            batch.append(task)
            rows += task.rows
        self._rows[key] -= rows
        if not queue:
            del self._queues[key], self._rows[key]
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Task]) -> None:
        first = batch[0]
        try:
            merged = self._merge(batch)
            if merged is None:  # shapes differ beyond the batch axis: run one by one
                for task in batch:
                    self._run_one(task)
                return
            try:
                outputs = inference.run(first.servable, first.signature, merged)
            except ServeError as exc:
                if len(batch) == 1 or exc.code is not Code.INVALID_ARGUMENT:
                    raise
                # One request's data (bytes that are not an image, say) fails the batch it is in: run
                # each request alone, so only that one gets the error.
                for task in batch:
                    self._run_one(task)
                return
            self._on_batch(first.servable.name, sum(t.rows for t in batch))
            self._split(batch, outputs)
        except BaseException as exc:  # every waiting request must learn about the failure
            for task in batch:
                if not task.done.is_set():
                    task.error = exc
                    task.done.set()

    def _run_one(self, task: _Task) -> None:
        try:
            task.outputs = inference.run(task.servable, task.signature, task.inputs)
            self._on_batch(task.servable.name, task.rows)
        except BaseException as exc:
            task.error = exc
        task.done.set()

    @staticmethod
    def _merge(batch: list[_Task]) -> dict[str, np.ndarray] | None:
        if len(batch) == 1:
            return batch[0].inputs
        merged = {}
        for name in batch[0].inputs:
            parts = [t.inputs[name] for t in batch]
            if any(p.ndim == 0 or p.shape[1:] != parts[0].shape[1:] for p in parts):
                return None
            merged[name] = np.concatenate(parts, axis=0)
        return merged

    @staticmethod
    def _split(batch: list[_Task], outputs: dict[str, Any]) -> None:
        total = sum(t.rows for t in batch)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise ServeError(Code.INTERNAL, f"output {name} has no batch dimension; cannot split a batch")
        start = 0
        for task in batch:
            task.outputs = {k: v[start : start + task.rows] for k, v in outputs.items()}
            start += task.rows
            task.done.set()
