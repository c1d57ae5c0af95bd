"""Overlapping work with ONNX Runtime: ONNX Runtime and NumPy's large copies release the GIL,
so a thread that runs the model on the next batch, or a second thread for NumPy work, is
real parallel time on a small machine."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

__all__ = ["run_ahead"]


_DONE = object()


def run_ahead(items: Iterator, fn: Callable[[Any], Any]) -> Iterator:
    """Yield ``fn(item)`` for each item, computed one item ahead in a worker thread.

    ONNX Runtime releases the GIL, so the model runs (on the next batch) while the caller's
    observers work on the current one. The worker starts item ``k + 1`` only once item ``k``
    was taken, so at most two results are alive. Errors raised in the worker (bad data, a
    failing run) are raised here, in order.
    """
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                result = fn(item)
                slot.put(result)
                del result
                slot.join()  # wait until the caller has taken it
            slot.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slot.put(exc)

    worker = threading.Thread(target=produce, name="trtq-ahead", daemon=True)
    worker.start()
    try:
        while (item := slot.get()) is not _DONE:
            slot.task_done()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on the slot
            try:
                slot.get_nowait()
                slot.task_done()
            except queue.Empty:
                worker.join(timeout=0.05)
