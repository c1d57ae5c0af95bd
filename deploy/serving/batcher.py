"""Dynamic batching: requests that arrive close together run as one batch.

A bounded queue feeds worker threads. A worker takes the oldest request, then waits up to
``max_delay`` (counted from that request's arrival) for more with the same per-sample
shapes and dtypes, until ``max_batch`` rows are gathered; it concatenates the inputs
along the first axis, runs the model once and splits the outputs back by rows. A request
that does not fit the current batch starts the next one, so arrival order is kept.

Thread safety follows the runtimes: ONNX Runtime sessions may be run from several threads;
:class:`deploy.Engine` gives each thread its own execution context and stream. So each
worker simply calls ``runner.infer``.

A full queue refuses new requests at once (:class:`Overloaded`, HTTP 503) instead of
letting latency grow without bound; :meth:`DynamicBatcher.close` stops intake and
finishes everything already queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from trtq.core.errors import TrtqError

log = logging.getLogger("trtq.serve")


class Overloaded(TrtqError):
    """The request queue is full, or the server is shutting down."""


@dataclass
class BatchStats:
    """What one executed batch looked like (for metrics)."""

    rows: int
    requests: int
    queue_wait_s: float  # of the oldest request
    compute_s: float


@dataclass
class _Item:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: tuple
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


_STOP = object()


class DynamicBatcher:
    """Queue requests for ``infer`` and run them in batches of up to ``max_batch`` rows.

    ``batched=False`` (a model without a batch dimension) runs each request alone.
    ``on_batch`` is called after each batch with its :class:`BatchStats`.
    """

    def __init__(self, infer: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]], *,
                 max_batch: int = 8, max_delay_s: float = 0.002, max_queue: int = 256, workers: int = 1,
                 batched: bool = True, on_batch: Callable[[BatchStats], None] | None = None,
                 name: str = "model") -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_delay_s < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and max_delay_s >= 0")
        self._infer = infer
        self.max_batch = max_batch if batched else 1
        self.max_delay_s = max_delay_s
        self.batched = batched
        self.name = name
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._intake = threading.Lock()  # orders submit() against close()
        self._threads = [threading.Thread(target=self._work, name=f"trtq-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def depth(self) -> int:
        """Requests waiting (not counting those being run)."""
        return self._queue.qsize()

    def submit(self, inputs: Mapping[str, np.ndarray], rows: int = 1) -> Future:
        """Queue one request of ``rows`` samples; its Future resolves to the output dict.

        Raises :class:`Overloaded` when the queue is full or the batcher is closed.
        """
        key = tuple(sorted((n, a.shape[1:] if self.batched else a.shape, a.dtype.str) for n, a in inputs.items()))
        item = _Item(inputs, rows, key)
        with self._intake:
            if self._closed:
                raise Overloaded("the server is shutting down")
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                raise Overloaded(f"{self._queue.maxsize} requests are already waiting; try again later") from None
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, stop the workers."""
        with self._intake:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)  # behind every queued request
        for t in self._threads:
            t.join(timeout)

    # -- worker side -------------------------------------------------------------------

    def _work(self) -> None:
        carry: _Item | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, rows, stop = [first], first.rows, False
            deadline = first.arrived + self.max_delay_s
            while self.batched and rows < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if item.key != first.key or rows + item.rows > self.max_batch:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._run(batch, rows)
            if stop:
                if carry is not None:
                    self._run([carry], carry.rows)
                return

    def _run(self, batch: list[_Item], rows: int) -> None:
        batch = [i for i in batch if i.future.set_running_or_notify_cancel()]
        if not batch:
            return
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                outputs = [dict(self._infer(batch[0].inputs))]
            else:
                feed = {n: np.concatenate([i.inputs[n] for i in batch]) for n in batch[0].inputs}
                merged = self._infer(feed)
                bounds = np.cumsum([i.rows for i in batch])[:-1]
                for name, value in merged.items():
                    if np.ndim(value) == 0 or len(value) != rows:
                        raise TrtqError(f"output {name} has shape {np.shape(value)}, not a batch of {rows}; "
                                        "this model cannot be batched (serve it with max batch 1)")
                parts = {name: np.split(value, bounds) for name, value in merged.items()}
                outputs = [{name: parts[name][k] for name in parts} for k in range(len(batch))]
        except Exception as exc:  # every waiting client gets the error, the worker keeps going
            log.error("inference failed for a batch of %d request(s): %s", len(batch), exc)
            for item in batch:
                item.future.set_exception(exc)
            return
        compute = time.perf_counter() - start
        for item, out in zip(batch, outputs):
            item.future.timing = (start - item.arrived, compute, rows)  # queue s, compute s, batch rows
            item.future.set_result(out)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(rows, len(batch), start - batch[0].arrived, compute))
            except Exception:  # metrics must never take a worker down
                log.exception("batch metrics callback failed")
