"""Triton's inference statistics (``GET /v2/models/NAME/stats``), kept per served model.

The JSON shape is Triton's (``tritonclient.http``'s ``get_inference_statistics`` reads it):
per model, counts and cumulative nanoseconds for success, fail, queue, compute_input (request
decoding), compute_infer (model execution, the request's batch) and compute_output (response
encoding), and per executed batch size the compute times of the batches of that size.
"""

from __future__ import annotations

import threading
import time

__all__ = ["InferenceStatistics"]

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class InferenceStatistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases = {p: [0, 0] for p in _PHASES}
        self._batches: dict[int, dict[str, list[int]]] = {}
        self.inference_count = 0  # samples (rows) inferred
        self.execution_count = 0  # batches executed
        self.last_inference_ms = 0

    def _add(self, phase: str, seconds: float) -> None:
        entry = self._phases[phase]
        entry[0] += 1
        entry[1] += int(seconds * 1e9)

    def request(self, *, ok: bool, total_s: float, decode_s: float = 0.0, queue_s: float = 0.0,
                infer_s: float = 0.0, encode_s: float = 0.0, rows: int = 0) -> None:
        """One request answered (``ok``) or failed, with the time of each phase."""
        with self._lock:
            if not ok:
                self._add("fail", total_s)
                return
            self._add("success", total_s)
            self._add("queue", queue_s)
            self._add("compute_input", decode_s)
            self._add("compute_infer", infer_s)
            self._add("compute_output", encode_s)
            self.inference_count += rows
            self.last_inference_ms = int(time.time() * 1000)

    def batch(self, rows: int, compute_s: float) -> None:
        """One executed batch of ``rows`` samples."""
        with self._lock:
            self.execution_count += 1
            entry = self._batches.setdefault(rows, {"compute_infer": [0, 0]})["compute_infer"]
            entry[0] += 1
            entry[1] += int(compute_s * 1e9)

    def to_json(self, name: str, version: str) -> dict:
        with self._lock:
            stats = {p: {"count": c, "ns": ns} for p, (c, ns) in self._phases.items()}
            batches = [{"batch_size": size, "compute_input": {"count": 0, "ns": 0},
                        "compute_infer": {"count": v["compute_infer"][0], "ns": v["compute_infer"][1]},
                        "compute_output": {"count": 0, "ns": 0}} for size, v in sorted(self._batches.items())]
            return {"model_stats": [{"name": name, "version": version, "last_inference": self.last_inference_ms,
                                     "inference_count": self.inference_count,
                                     "execution_count": self.execution_count, "inference_stats": stats,
                                     "batch_stats": batches, "memory_usage": []}]}
