"""generate_image_v2 (seed 000): text-to-image with the seed's exact input/output schema.

The size is the seed's aspect-ratio table (``9:16_HD`` …) resolved for the routed
model by the engine; one pipeline call with ``num_images_per_prompt`` = batch_size,
split only where the family's per-call limit is lower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from imagenodes.nodes.common import (
    PIXELML_CONNECTION,
    SEED_FIELD_CODES,
    Prompt,
    Seed,
    batch_size_field,
    guidance_field,
    images_output_field,
    negative_prompt_field,
    prompt_field,
    seed_field,
    seed_model_config,
    steps_field,
)
from imagenodes.sdk import Aspect, ImageJob, ImageRef, Node, RunContext, Text, hookimpl

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
    negative_prompt: Text = negative_prompt_field()
    guidance_scale: float = guidance_field(8)
    steps: int = steps_field()
    batch_size: int = batch_size_field()
    seed: Seed = seed_field()
    aspect_ratio: AspectRatio = Field(
        default="9:16_HD",
        title="Aspect ratio",
        description="The aspect ratio of the generated image.",
    )


class GenerateImageV2NodeOutput(BaseModel):
    """Generate image node output."""

    model_config = seed_model_config("GenerateImageV2NodeOutput")

    images: list[ImageRef] = images_output_field()


class GenerateImageV2(Node[GenerateImageV2NodeInput, GenerateImageV2NodeOutput]):
    id = "generate_image_v2"
    version = "2.0.0"
    title = "Generate Image V2"
    description = (
        "Use AI to generate images from your imagination. Simply describe what you want "
        "to see, and watch the AI bring it to life."
    )
    category = "image"
    connections = (PIXELML_CONNECTION,)
    field_codes = SEED_FIELD_CODES

    def run(self, inputs: GenerateImageV2NodeInput, ctx: RunContext) -> GenerateImageV2NodeOutput:
        job = ImageJob.of(
            inputs,
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            guidance_scale=inputs.guidance_scale,
            steps=inputs.steps,
            size=Aspect.parse(inputs.aspect_ratio),
            count=inputs.batch_size,
            seed=inputs.seed,
        )
        generation = ctx.models.generate(job)
        images = ctx.images.save_generation(generation, {"aspect_ratio": inputs.aspect_ratio})
        return GenerateImageV2NodeOutput(images=images)


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(GenerateImageV2)
