"""image_generation (seed 002, Diaflow "Image Generation"): one node for create and edit.

The schema is ours (the seed gives none): pick a model by name and the engine routes
it; no image source → text-to-image, one → image-to-image, several → blended into one
init image (a notice says so).  Guardrails follow the seed: an unsupported aspect
ratio falls back to 1:1, the image count is clamped to the model's range, a size the
model cannot produce is capped — each reported as a notice, never an error.

With a fixed seed and ``use_cache`` on, an identical repeated request returns the
stored images of the earlier run (notice ``CACHED_RESULT``) instead of generating:
the node declares ``cacheable`` and the host's result cache does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field

from imagenodes.nodes.common import PIXELML_CONNECTION, SEED_FIELD_CODES, ImageCount
from imagenodes.sdk import (
    RATIOS,
    Aspect,
    Catalog,
    ImageJob,
    ImageRef,
    Node,
    NodeInput,
    NodeOutput,
    Prompt,
    RunContext,
    Text,
    hookimpl,
)

DEFAULT_ASPECT = "1:1"
#: Blending more than a few sources gives mud, and each one is a download and a decode:
#: the seeds' builders take a handful, so 8 bounds a request's work and memory.
MAX_SOURCES = 8
SIZES: dict[str, int | None] = {"native": None, "1K": 1024, "2K": 2048}


class ImageGenerationInput(NodeInput):
    """Create an image from a prompt, or edit/blend the given source images."""

    model: str = Field(
        default="default",
        title="Model",
        description="Which image model to use. 'default' is the connection's model; the other "
        "choices are the registered model families, routed automatically.",
    )
    prompt: Prompt = Field(
        title="Prompt",
        description="Describe the image clearly: subject, style, colours, setting, composition.",
    )
    image_sources: list[ImageRef] = Field(
        default_factory=list,
        max_length=MAX_SOURCES,
        title="Image source",
        description=f"Optional images to edit (one) or blend (up to {MAX_SOURCES}): workspace "
        "file references from earlier steps, workspace paths, http(s) URLs or data URIs.",
    )
    aspect_ratio: str = Field(
        default=DEFAULT_ASPECT,
        title="Aspect ratio",
        description="Shape of the image: 1:1, 3:4, 4:3, 9:16 or 16:9. Unsupported values fall "
        "back to 1:1 (reported in the result).",
        examples=list(RATIOS),
    )
    image_size: Literal["native", "1K", "2K"] = Field(
        default="native",
        title="Image size",
        description="Longest side: the model's native size, 1024 px or 2048 px. Models that "
        "cannot produce the size use their largest (reported in the result).",
    )
    num_images: ImageCount = Field(
        default=1,
        title="Number of images",
        description="How many variations to create. Adjusted to the model's supported range "
        "(reported in the result).",
    )
    negative_prompt: Text | None = Field(
        default=None, title="Negative prompt", description="What to keep out of the image."
    )
    strength: float = Field(
        default=0.75,
        gt=0,
        le=1,
        title="Edit strength",
        description="With an image source: how far to move away from it (0–1].",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**32,
        title="Seed",
        description="Fixed seed for reproducible images; empty for random.",
    )
    use_cache: bool = Field(
        default=True,
        title="Reuse identical results",
        description="With a fixed seed, an identical earlier request returns its stored "
        "images instead of generating again.",
    )


class ImageGenerationOutput(NodeOutput):
    """The generated images as workspace file references."""

    images: list[ImageRef] = Field(title="Images", description="Workspace file references.")
    cached: bool = Field(
        default=False,
        title="From cache",
        description="True when an identical earlier result was returned.",
    )


def model_choices(catalog: Catalog) -> list[str]:
    """'default' first, then the embedded model, then the other families."""
    return ["default", *catalog.model_families()]


class ImageGeneration(Node[ImageGenerationInput, ImageGenerationOutput]):
    id = "image_generation"
    version = "1.0.0"
    title = "Image Generation"
    description = (
        "Create a new image from a text prompt, or edit existing images, with automatic "
        "model routing, safe aspect-ratio fallbacks and image-count guardrails."
    )
    category = "image"
    connections = (PIXELML_CONNECTION,)
    #: Image inputs may be URLs: a run must end even when a download or a model hangs.
    timeout = 900.0
    field_codes: ClassVar[dict[str, str]] = {
        **SEED_FIELD_CODES,
        "image_sources": "SOURCE_IMAGE_ERROR",
        "num_images": "BATCH_SIZE_EXCEEDED",
    }

    choices: ClassVar[dict[str, Callable[[Catalog], list[str]]]] = {"model": model_choices}
    # The host's result cache: with a fixed seed and use_cache, an identical request
    # returns the stored images (CACHED_RESULT) instead of generating again.
    cacheable = True
    cache_exclude = frozenset({"use_cache"})
    cache_marker = "cached"

    def use_cache(self, inputs: ImageGenerationInput) -> bool:
        return inputs.use_cache and inputs.seed is not None

    def run(self, inputs: ImageGenerationInput, ctx: RunContext) -> ImageGenerationOutput:
        job = ImageJob.of(
            inputs,
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            strength=inputs.strength,
            size=Aspect(
                inputs.aspect_ratio,
                SIZES[inputs.image_size],
                fallback=DEFAULT_ASPECT,
                size_field="image_size",
            ),
            count=inputs.num_images,
            count_policy="clamp",
            count_field="num_images",
            seed=inputs.seed,
            sources=[ctx.images.load(src) for src in inputs.image_sources],
            model=None if inputs.model == "default" else inputs.model,
        )
        generation = ctx.models.generate(job)
        aspect = inputs.aspect_ratio if inputs.aspect_ratio in RATIOS else DEFAULT_ASPECT
        images = ctx.images.save_generation(generation, {"aspect_ratio": aspect})
        return ImageGenerationOutput(images=images)


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(ImageGeneration)
