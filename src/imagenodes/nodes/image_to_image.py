"""image_to_image (seed 001): transform a source image, with the seed's exact schema.

width/height 0 means "the source's size" (rounded to the model's multiple by the
engine); one of them 0 keeps the source's aspect.  SD-family models run img2img with ``strength``;
InstructPix2Pix models are routed to an instruction edit that uses
``image_guidance_scale``; SDXL and FLUX get ``prompt_2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, Field

from imagenodes.nodes.common import (
    PIXELML_CONNECTION,
    SEED_FIELD_CODES,
    NonNegativeSize,
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
from imagenodes.sdk import (
    IMAGE_TO_IMAGE,
    FromSource,
    ImageJob,
    ImageRef,
    Node,
    RunContext,
    Text,
    hookimpl,
)


class ImageToImageNodeInput(BaseModel):
    """Image to image node input."""

    model_config = seed_model_config("ImageToImageNodeInput")

    source_image: ImageRef = Field(
        title="Source Image",
        description="The image to use as the source for the image to image generation.",
    )
    prompt: Prompt = prompt_field()
    prompt_2: Text | None = Field(
        default=None, title="Prompt 2", description="A second prompt to guide the image generation."
    )
    negative_prompt: Text = negative_prompt_field()
    guidance_scale: float = guidance_field(7.5)
    image_guidance_scale: float = Field(
        default=1.5,
        gt=0,
        le=15,
        title="Image Guidance Scale",
        description="The guidance scale of the generated image.",
    )
    strength: float = Field(
        default=0.8, gt=0, le=1, title="Strength", description="The strength of the source image."
    )
    steps: int = steps_field()
    batch_size: int = batch_size_field()
    seed: Seed = seed_field()
    width: NonNegativeSize = Field(
        default=0, title="Width", description="The width of the generated image."
    )
    height: NonNegativeSize = Field(
        default=0, title="Height", description="The height of the generated image."
    )


class ImageToImageNodeOutput(BaseModel):
    """Image to image node output."""

    model_config = seed_model_config("ImageToImageNodeOutput")

    images: list[ImageRef] = images_output_field()


class ImageToImage(Node[ImageToImageNodeInput, ImageToImageNodeOutput]):
    id = "image_to_image"
    version = "1.0.0"
    title = "Image to Image"
    description = (
        "Use AI to generate images from your imagination. Simply describe what you want "
        "to see, and watch the AI bring it to life."
    )
    category = "image"
    connections = (PIXELML_CONNECTION,)
    #: Image inputs may be URLs: a run must end even when a download or a model hangs.
    timeout = 900.0
    field_codes: ClassVar[dict[str, str]] = {
        **SEED_FIELD_CODES,
        "source_image": "SOURCE_IMAGE_ERROR",
    }
    # Seed 001's error table words these four differently from seed 000's.
    solutions: ClassVar[dict[str, str]] = {
        "CONNECTION_ERROR": "Verify your PixelML connection credentials and ensure the API "
        "key is valid",
        "EMPTY_PROMPT": "Provide a descriptive prompt that defines the desired output style "
        "and elements",
        "INVALID_GUIDANCE_SCALE": "Keep guidance_scale and image_guidance_scale between 0.1 and 15",
        "INVALID_STEPS": "Set steps between 1 and 50 (20-30 is typically sufficient)",
    }

    def run(self, inputs: ImageToImageNodeInput, ctx: RunContext) -> ImageToImageNodeOutput:
        job = ImageJob.of(
            inputs,
            task=IMAGE_TO_IMAGE,
            prompt=inputs.prompt,
            prompt_2=inputs.prompt_2,
            negative_prompt=inputs.negative_prompt,
            guidance_scale=inputs.guidance_scale,
            image_guidance_scale=inputs.image_guidance_scale,
            strength=inputs.strength,
            steps=inputs.steps,
            size=FromSource(inputs.width, inputs.height),
            count=inputs.batch_size,
            seed=inputs.seed,
            sources=[ctx.images.load(inputs.source_image)],
        )
        generation = ctx.models.generate(job)
        extra = {"source_image": _short(inputs.source_image)}
        return ImageToImageNodeOutput(images=ctx.images.save_generation(generation, extra))


def _short(source: str) -> str:
    """Keep data URIs out of PNG metadata: they can be megabytes."""
    return source if len(source) <= 512 else source[:64] + f"…({len(source)} chars)"


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(ImageToImage)
