"""Engine settings from the environment, readable without importing torch.

The pipeline cache's byte budget (``IMAGENODES_CACHE_BYTES``) and the CPU allocator
choice (``IMAGENODES_CPU_MALLOC``).  The host checks both at construction (a bad value
is a clear error up front) but creates the engine — and imports torch — only on first
use.
"""

from __future__ import annotations

import os

from imagenodes.errors import ConnectionConfigError

CACHE_BYTES_ENV = "IMAGENODES_CACHE_BYTES"
DEFAULT_BUDGET = 8 * 1024**3


def budget_from_env() -> int:
    raw = os.environ.get(CACHE_BYTES_ENV)
    if not raw:
        return DEFAULT_BUDGET
    try:
        return int(float(raw))
    except ValueError:
        raise ConnectionConfigError(
            f"{CACHE_BYTES_ENV}={raw!r} is not a number of bytes", field=CACHE_BYTES_ENV
        ) from None


CPU_MALLOC_ENV = "IMAGENODES_CPU_MALLOC"
CPU_MALLOC_CHOICES = ("tuned", "default")


def cpu_malloc_from_env() -> str:
    """``tuned`` (unset: the engine sets the allocator up for CPU work) or ``default``
    (leave it as it is); see ``engine.device.tune_cpu_malloc``."""
    raw = os.environ.get(CPU_MALLOC_ENV, "")
    choice = raw.strip().lower() or "tuned"
    if choice not in CPU_MALLOC_CHOICES:
        raise ConnectionConfigError(
            f"{CPU_MALLOC_ENV}={raw!r} must be one of: {', '.join(CPU_MALLOC_CHOICES)}",
            field=CPU_MALLOC_ENV,
        )
    return choice


__all__ = [
    "CACHE_BYTES_ENV",
    "CPU_MALLOC_CHOICES",
    "CPU_MALLOC_ENV",
    "DEFAULT_BUDGET",
    "budget_from_env",
    "cpu_malloc_from_env",
]
