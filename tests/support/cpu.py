"""CPU accounting of process trees, for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live children of a live process, from every one of its threads ([] once it is gone)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
        todo += children(current)
    return total


def tree_cpu_precise(pid: int) -> float:
    """CPU seconds of a live process tree from each thread's scheduler statistics (nanoseconds, not ticks):
    for the small differences a tick-based count cannot see. Threads that have ended are not counted."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def trees_cpu(pids) -> float:
    """User + system CPU seconds of several live process trees together (see `tree_cpu`)."""
    return sum(tree_cpu(pid) for pid in pids)
