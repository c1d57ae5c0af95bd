"""Latency and throughput of any runner (ONNX Runtime or a TensorRT engine) on synthetic inputs."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from trtq.deploy.runner import QdqMode, Runner, open_runner
from trtq.core.errors import DataError


@dataclass(frozen=True)
class BenchmarkReport:
    runner: str
    batch: int
    iterations: int
    latency_ms: Mapping[str, float]  # mean, p50, p90, p99, min, max
    samples_per_s: float

    def to_json(self) -> dict:
        return dict(self.__dict__, latency_ms=dict(self.latency_ms))


def synthetic_feed(runner: Runner, batch: int, shapes: Mapping[str, tuple[int, ...]] | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the runner's dtypes: batch ``batch``; other dynamic dims from ``shapes``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in runner.inputs:
        if shapes and spec.name in shapes:
            shape = tuple(shapes[spec.name])
        else:
            dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(spec.shape)]
            if any(not isinstance(d, int) for d in dims):
                raise DataError(f"input '{spec.name}' has dynamic dims {spec.describe()}; give its shape, "
                                f"e.g. --shape {spec.name}:{batch}x128")
            shape = tuple(dims)
        if np.issubdtype(spec.dtype, np.integer):
            feed[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feed[spec.name] = np.ones(shape, np.bool_)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


def benchmark(model: str | os.PathLike | Runner, batch: int = 1, iterations: int = 100, warmup: int = 10,
              shapes: Mapping[str, tuple[int, ...]] | None = None, *,
              mode: QdqMode | str = QdqMode.ORT_INT8) -> BenchmarkReport:
    """Time ``iterations`` calls of the model (after ``warmup`` untimed ones), one at a time.

    ``model``: a runner, or a path opened with :func:`open_runner` in ``mode`` (default: ONNX
    Runtime's int8 kernels for a Q/DQ ``.onnx``, the deployment speed on a CPU) and closed after.
    """
    if isinstance(model, (str, os.PathLike)):
        with contextlib.closing(open_runner(model, mode=mode)) as runner:
            return benchmark(runner, batch, iterations, warmup, shapes)
    runner = model
    feed = synthetic_feed(runner, batch, shapes)
    for _ in range(warmup):
        runner.infer(feed)
    times = np.empty(iterations)
    for i in range(iterations):
        t = time.perf_counter()
        runner.infer(feed)
        times[i] = time.perf_counter() - t
    ms = times * 1000
    latency = {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
               "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max())}
    n = next(iter(feed.values())).shape[0] if feed else batch
    return BenchmarkReport(runner.name, n, iterations, latency, n * iterations / float(times.sum()))
