"""Device and dtype choice: auto means the best the machine has, overridable."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from imagenodes.engine.budget import cpu_malloc_from_env

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISION_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> str:
    """fp16 on GPUs, fp32 on CPU: half precision on CPU is slow and lossy."""
    requested = PRECISION_ALIASES.get(requested, requested)
    if requested != "auto":
        return requested
    return "float16" if device in ("cuda", "mps") else "float32"


@contextmanager
def cpu_threads(count: int | None) -> Iterator[int]:
    """Run the block with ``count`` intra-op threads, then put the previous count back.

    torch keeps the count per OS thread (OpenMP's ICV) but also seeds every new
    thread from a process-wide value that ``set_num_threads`` overwrites, so the old
    value is restored to leave other threads' defaults alone.  ``None`` keeps
    torch's choice and still reports it.
    """
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield previous
        return
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


#: glibc ``mallopt`` parameters (malloc.h) and the values the engine sets for CPU work.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_TUNING = (
    (_M_MMAP_THRESHOLD, 32 << 20),  # the largest glibc accepts on 64-bit
    (_M_TRIM_THRESHOLD, 1 << 30),
    (_M_TOP_PAD, 64 << 20),
)
#: What the user may have chosen instead; any of these leaves malloc alone.
_MALLOC_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")
_malloc_state: str | None = None
_malloc_lock = threading.Lock()


def tune_cpu_malloc() -> str:
    """Keep a CPU pipeline call's activation buffers in the heap; once per process.

    Why: torch allocates each large intermediate tensor (convolution and attention
    buffers of a few MiB) with ``malloc``, and glibc serves blocks above its *dynamic*
    mmap threshold with a fresh ``mmap`` that ``free`` unmaps again.  Every step then
    zero-fills new pages through page faults: 1–3 million minor faults and 1–6 s of
    kernel time per 10-step SD1.5-layout call at 128×128 on a 2-core machine, the same
    call taking 5.5–11 s in one process and 4.2–5 s in another, depending on where
    glibc's threshold happened to drift (``bench/threads.py --served``, docs/performance.md
    "Against ComfyUI").  Fixing the threshold at 32 MiB and not trimming the heap below
    1 GiB keeps the buffers in reused heap memory: ~8 thousand faults per call, no
    kernel time, and no higher peak RSS (freed memory is kept for the next call, up to
    1 GiB, instead of being returned at once).

    Left alone where the user chose: ``IMAGENODES_CPU_MALLOC=default``, glibc's own
    ``MALLOC_*_`` variables or ``glibc.malloc`` tunables, or another allocator in
    ``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc).  Returns what was done: ``tuned``,
    ``default`` (asked), ``user`` (the user's settings), or ``unsupported`` (not glibc).
    """
    global _malloc_state
    with _malloc_lock:
        if _malloc_state is None:
            _malloc_state = _apply_malloc_tuning()
        return _malloc_state


def _apply_malloc_tuning() -> str:
    if cpu_malloc_from_env() == "default":
        return "default"
    preload = os.environ.get("LD_PRELOAD", "")
    if (
        any(os.environ.get(name) for name in _MALLOC_CHOICES)
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
        or any(name in preload for name in _PRELOADED)
    ):
        return "user"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unsupported"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unsupported"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in _MALLOC_TUNING)
    return "tuned" if ok else "unsupported"
