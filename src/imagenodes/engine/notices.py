"""Notices: every adaptation the engine or a node makes to what was asked.

A builder shows these next to the result ("aspect ratio 7:5 is not supported, used
1:1"), so each one names the field, what was requested, what was applied and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Notice:
    code: str
    field: str | None
    requested: Any
    applied: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.code} [{self.field}]: {self.requested!r} → {self.applied!r} ({self.reason})"


# Stable notice codes (documented in docs/routing.md).
PARAMETER_IGNORED = "PARAMETER_IGNORED"
ASPECT_RATIO_FALLBACK = "ASPECT_RATIO_FALLBACK"
IMAGE_COUNT_CLAMPED = "IMAGE_COUNT_CLAMPED"
SIZE_CAPPED = "SIZE_CAPPED"
SIZE_ROUNDED = "SIZE_ROUNDED"
GUIDANCE_CLAMPED = "GUIDANCE_CLAMPED"
STEPS_CLAMPED = "STEPS_CLAMPED"
PRECISION_FALLBACK = "PRECISION_FALLBACK"
TASK_ROUTED = "TASK_ROUTED"
IMAGES_BLENDED = "IMAGES_BLENDED"
BATCH_SPLIT = "BATCH_SPLIT"
CACHED_RESULT = "CACHED_RESULT"
SIZE_RESAMPLED = "SIZE_RESAMPLED"
STRENGTH_RAISED = "STRENGTH_RAISED"
PROMPT_TRUNCATED = "PROMPT_TRUNCATED"
SIZE_UPSCALED = "SIZE_UPSCALED"
SIZE_NATIVE = "SIZE_NATIVE"
