"""Imported first by every console script that computes, before anything loads torch: on a machine that other work already keeps
busy, OpenMP threads that wait for work sleep (`OMP_WAIT_POLICY=PASSIVE`) instead of spinning on the cores that work
needs. On an idle machine libgomp's own default stays: its threads spin a while before they sleep, which is faster
for the many small parallel regions of a small model.

libgomp, the OpenMP runtime of torch's CPU builds, reads the variable once, when torch loads it; so the machine is
looked at once, for 0.1 s, as the command starts (work that starts later is not seen). A value the user set is kept.
`benchmarks/bench_shared_machine.py` measures both cases (README, Speed).
"""

import os
import time

BUSY_CORES = 0.5  # other work using half a core or more: the machine is shared


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores other work keeps busy now, from the kernel's counters (0 where there are none: not Linux)."""
    def idle_and_total() -> tuple[int, int]:
        with open("/proc/stat") as file:
            ticks = [int(value) for value in file.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    try:
        idle, total = idle_and_total()
        time.sleep(seconds)
        idle_after, total_after = idle_and_total()
    except (OSError, ValueError, IndexError):
        return 0.0
    busy_share = 1 - (idle_after - idle) / max(total_after - total, 1)
    return busy_share * (os.cpu_count() or 1)


if "OMP_WAIT_POLICY" not in os.environ and busy_cores() >= BUSY_CORES:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
