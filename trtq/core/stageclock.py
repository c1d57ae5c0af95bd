"""Wall time and peak memory of each stage of a job.

Peak memory is the process's resident-set high-water mark (``VmHWM``) during the stage:
Linux lets a process reset it (``5`` written to ``/proc/self/clear_refs``), so each stage's
peak is its own, not the largest of the stages before it. Where that is not possible the
peak so far is reported (``ru_maxrss``) and :attr:`StageClock.exact` is False. ONNX
Runtime runs in this process, so its buffers are counted; trtq starts no child processes.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["StageClock", "StageTime", "peak_rss_bytes"]

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (since the last reset, where resets work)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class StageTime:
    name: str
    seconds: float
    peak_bytes: int

    def to_json(self) -> dict:
        return {"stage": self.name, "seconds": round(self.seconds, 2), "peak_rss_mb": round(self.peak_bytes / 2**20)}


class StageClock:
    """``with clock("calibration"): ...`` records the stage's time and peak memory."""

    def __init__(self) -> None:
        self.stages: list[StageTime] = []
        self.exact = True

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.exact = _reset_peak() and self.exact
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append(StageTime(name, time.perf_counter() - start, peak_rss_bytes()))

    def rename_last(self, name: str) -> None:
        """Name the last stage ``name`` (what it turned out to do)."""
        last = self.stages[-1]
        self.stages[-1] = StageTime(name, last.seconds, last.peak_bytes)

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.stages), default=0)

    def to_json(self) -> dict:
        return {"stages": [s.to_json() for s in self.stages], "seconds": round(self.total_seconds, 2),
                "peak_rss_mb": round(self.peak_bytes / 2**20), "peak_per_stage": self.exact}
