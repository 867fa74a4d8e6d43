"""The diffusers backend: model profiles, routing, pipeline cache and generation."""

import os as _os

# Before torch is imported (its CPU allocator reads this once, at its first allocation):
# large CPU tensors on transparent huge pages, so a pipeline call's fresh activation
# buffers fault in 2 MiB at a time instead of 4 KiB (see engine.device.tune_cpu_malloc,
# which does the rest; IMAGENODES_CPU_MALLOC=default or THP_MEM_ALLOC_ENABLE=0 opt out).
if _os.environ.get("IMAGENODES_CPU_MALLOC", "").strip().lower() != "default":
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from imagenodes.engine.embedded import embedded_model_path
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import BUILTIN_PROFILES, ModelProfile
from imagenodes.engine.request import GenerationRequest

__all__ = [
    "BUILTIN_PROFILES",
    "GenerationRequest",
    "ModelProfile",
    "Notice",
    "embedded_model_path",
]
