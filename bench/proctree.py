"""Run a command and measure its wall time and the peak RSS of its whole process tree.

``ru_maxrss`` from ``wait4`` is no good for a child of a big benchmark process: Linux keeps
the pre-``exec`` high-water mark, i.e. the parent's size at ``fork``. Instead a thread samples
``/proc`` every 20 ms: the sum of ``VmRSS`` over the process and all its descendants, and each
process's own ``VmHWM`` (its peak between samples). The peak reported is the larger of the two.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


def _status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "PPid"):
            out[key] = int(value.split()[0])
    return out


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(parents.get(pid, ()))
    return pids


def run_measured(cmd: list[str], log: Path, interval: float = 0.02) -> dict:
    """Run ``cmd`` with output to ``log``: ``seconds``, ``rss_mb`` (peak of the tree) and ``rc``."""
    peak = [0]
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                stats = [_status(p) for p in _tree(proc.pid)]
                total = sum(s.get("VmRSS", 0) for s in stats)
                own = max((s.get("VmHWM", 0) for s in stats), default=0)
                peak[0] = max(peak[0], total, own)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    return {"seconds": time.perf_counter() - t, "rss_mb": peak[0] / 1024, "rc": rc, "log": str(log)}
