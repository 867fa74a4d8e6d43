"""Memory readings for engine status reports (``check_engine_status``).

Process and system figures come from the OS; GPU figures from torch only when the
device is CUDA, so a status report on a CPU machine never initialises CUDA.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def rss_bytes() -> int | None:
    """Current resident set size; /proc on Linux, else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


def memory_status(cache_bytes: int, budget_bytes: int, device: str) -> dict[str, Any]:
    """Cache, process, system and (on CUDA) GPU memory, in bytes; None where unknown."""
    mem: dict[str, Any] = {
        "cacheBytes": cache_bytes,
        "cacheBudgetBytes": budget_bytes,
        "processRssBytes": rss_bytes(),
        "systemTotalBytes": None,
        "systemAvailableBytes": None,
        "gpuTotalBytes": None,
        "gpuFreeBytes": None,
        "gpuAllocatedBytes": None,
    }
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem["systemTotalBytes"] = pages * page
        mem["systemAvailableBytes"] = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # not on every platform
        pass
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        mem["gpuFreeBytes"], mem["gpuTotalBytes"] = int(free), int(total)
        mem["gpuAllocatedBytes"] = int(torch.cuda.memory_allocated())
    return mem
