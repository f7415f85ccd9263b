"""The machine a benchmark's numbers come from, in one line (every table names it)."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """Host, CPU model, cores, memory and load average, e.g. ``vm: AMD EPYC ..., 2 cores``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores{mem}{load}"
