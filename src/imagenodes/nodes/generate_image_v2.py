"""generate_image_v2 (seed 000): text-to-image with the seed's exact input/output schema.

One pipeline call with ``num_images_per_prompt`` = batch_size (split only where the
family's per-call limit is lower), sized by the aspect-ratio table of
:mod:`imagenodes.engine.aspect` for the routed model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from imagenodes.engine.aspect import aspect_size
from imagenodes.engine.profiles import TEXT_TO_IMAGE
from imagenodes.engine.request import GenerationRequest
from imagenodes.nodes.common import (
    SEED_FIELD_CODES,
    Prompt,
    batch_size_field,
    guidance_field,
    images_output_field,
    negative_prompt_field,
    prompt_field,
    seed_field,
    seed_model_config,
    steps_field,
)
from imagenodes.registry.context import RunContext
from imagenodes.registry.hookspecs import hookimpl
from imagenodes.registry.node import PIXELML_CONNECTION, Node

AspectRatio = Literal[
    "1:1",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "1:1_HD",
    "3:4_HD",
    "4:3_HD",
    "9:16_HD",
    "16:9_HD",
    "1:1_FHD",
    "3:4_FHD",
    "4:3_FHD",
    "9:16_FHD",
    "16:9_FHD",
]


class GenerateImageV2NodeInput(BaseModel):
    """Generate image node input."""

    model_config = seed_model_config("GenerateImageV2NodeInput")

    prompt: Prompt = prompt_field()
    negative_prompt: str = negative_prompt_field()
    guidance_scale: float = guidance_field(8)
    steps: int = steps_field()
    batch_size: int = batch_size_field()
    seed: int | None = seed_field()
    aspect_ratio: AspectRatio = Field(
        default="9:16_HD",
        title="Aspect ratio",
        description="The aspect ratio of the generated image.",
    )


class GenerateImageV2NodeOutput(BaseModel):
    """Generate image node output."""

    model_config = seed_model_config("GenerateImageV2NodeOutput")

    images: list[str] = images_output_field()


class GenerateImageV2(Node):
    id = "generate_image_v2"
    version = "2.0.0"
    title = "Generate Image V2"
    description = (
        "Use AI to generate images from your imagination. Simply describe what you want "
        "to see, and watch the AI bring it to life."
    )
    category = "image"
    Input = GenerateImageV2NodeInput
    Output = GenerateImageV2NodeOutput
    connections = (PIXELML_CONNECTION,)
    field_codes = SEED_FIELD_CODES

    def run(self, inputs: GenerateImageV2NodeInput, ctx: RunContext) -> GenerateImageV2NodeOutput:
        resolved = ctx.engine.resolve(ctx.connection())  # type: ignore[arg-type]
        width, height, size_notes = aspect_size(inputs.aspect_ratio, resolved.profile)
        for notice in size_notes:
            ctx.notice(notice)
        request = GenerationRequest(
            task=TEXT_TO_IMAGE,
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            guidance_scale=inputs.guidance_scale,
            steps=inputs.steps,
            width=width,
            height=height,
            num_images=inputs.batch_size,
            seed=inputs.seed,
            explicit=frozenset(inputs.model_fields_set),
        )
        result = ctx.generate(request)
        refs = ctx.store_generation(result, {"aspect_ratio": inputs.aspect_ratio})
        return GenerateImageV2NodeOutput(images=refs)


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(GenerateImageV2)
