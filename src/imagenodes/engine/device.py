"""Device and dtype choice: auto means the best the machine has, overridable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

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
