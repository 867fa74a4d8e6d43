"""Device and dtype choice: auto means the best the machine has, overridable."""

from __future__ import annotations

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
