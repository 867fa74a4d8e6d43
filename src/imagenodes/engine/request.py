"""What a node asks the engine for, independent of any model family."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from PIL import Image

MAX_SEED = 2**32 - 1


class Control(Protocol):
    """What the engine reports progress to and asks whether to stop (a run's
    ``ctx.util``; a batch's fan-out to its members)."""

    def emit(self, type: str, **data: Any) -> None: ...

    def check(self) -> None: ...


def draw_seed() -> int:
    """A random 32-bit seed for a request that gave none (reported back to the user)."""
    return random.SystemRandom().randint(0, MAX_SEED)


@dataclass
class GenerationRequest:
    """One generation: a prompt, its parameters and how many images.

    ``explicit`` names the optional parameters the user actually set; dropping one of
    those for a family that cannot use it is reported as a notice, while a node's
    untouched default is simply not passed on.
    """

    task: str
    #: One prompt for ``num_images`` images, or one prompt per image (batched requests
    #: of different prompts share one pipeline call).
    prompt: str | list[str]
    negative_prompt: str | list[str] | None = None
    prompt_2: str | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    seed: int | None = None
    #: Explicit per-image seeds (batched requests); default is ``seed + i``.
    seeds: list[int] | None = None
    image: Image.Image | None = None
    strength: float | None = None
    precision: str | None = None
    lora_path: str | None = None
    lora_scale: float = 1.0
    explicit: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)

    def params(self) -> dict[str, Any]:
        """Effective parameters, JSON-ready (for run.json and PNG metadata)."""
        return {
            "task": self.task,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "prompt_2": self.prompt_2,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
            "steps": self.steps,
            "width": self.width,
            "height": self.height,
            "num_images": self.num_images,
            "seed": self.seed,
            "seeds": self.seeds,
            "strength": self.strength,
            "precision": self.precision,
            "lora_path": self.lora_path,
            "lora_scale": self.lora_scale if self.lora_path else None,
        }
