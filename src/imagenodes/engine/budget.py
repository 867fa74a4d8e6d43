"""The pipeline cache's byte budget, readable without importing torch.

The host checks ``IMAGENODES_CACHE_BYTES`` at construction (a bad value is a clear
error up front) but creates the engine — and imports torch — only on first use.
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


__all__ = ["CACHE_BYTES_ENV", "DEFAULT_BUDGET", "budget_from_env"]
