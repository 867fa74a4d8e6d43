"""Run events: the one stream a builder (or the CLI's progress bar) follows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

RUN_STARTED = "run_started"
MODEL_LOADING = "model_loading"
MODEL_LOADED = "model_loaded"
STEP = "step"
IMAGE_STORED = "image_stored"
RUN_FINISHED = "run_finished"
RUN_FAILED = "run_failed"
RUN_CANCELLED = "run_cancelled"

EVENT_TYPES = (
    RUN_STARTED,
    MODEL_LOADING,
    MODEL_LOADED,
    STEP,
    IMAGE_STORED,
    RUN_FINISHED,
    RUN_FAILED,
    RUN_CANCELLED,
)


@dataclass(frozen=True)
class Event:
    type: str
    run_id: str
    node: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "run_id": self.run_id,
            "node": self.node,
            "time": self.time,
            **self.data,
        }

    def __str__(self) -> str:
        if self.type == STEP:
            d = self.data
            return (
                f"[{self.node} {self.run_id[:8]}] step {d['step']}/{d['total']} "
                f"(batch {d['batch_index']}, {d['elapsed_s']:.1f}s, eta {d['eta_s']:.1f}s)"
            )
        extra = " ".join(f"{k}={v}" for k, v in self.data.items())
        return f"[{self.node} {self.run_id[:8]}] {self.type} {extra}".rstrip()
