"""image_generation (seed 002, Diaflow "Image Generation"): one node for create and edit.

The schema is ours (the seed gives none): pick a model by name and the engine routes
it; no image source → text-to-image, one → image-to-image, several → blended into one
init image (a notice says so).  Guardrails follow the seed: an unsupported aspect
ratio falls back to 1:1, the image count is clamped to the model's range, a size the
model cannot produce is capped — each reported as a notice, never an error.

With a fixed seed and ``use_cache`` on, an identical repeated request returns the
stored images of the earlier run (notice ``CACHED_RESULT``) instead of generating.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from imagenodes.engine import notices as nc
from imagenodes.engine.aspect import RATIOS, fit_size, round_to_multiple
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, ModelProfile
from imagenodes.engine.request import GenerationRequest
from imagenodes.errors import InputError
from imagenodes.nodes.common import SEED_FIELD_CODES, Prompt
from imagenodes.registry.context import RunContext
from imagenodes.registry.hookspecs import hookimpl
from imagenodes.registry.node import PIXELML_CONNECTION, Node, NodeInput, NodeOutput

DEFAULT_ASPECT = "1:1"
SIZES: dict[str, int | None] = {"native": None, "1K": 1024, "2K": 2048}
CACHE_DIR = "cache/image_generation"


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
    image_sources: list[str] = Field(
        default_factory=list,
        title="Image source",
        description="Optional images to edit (one) or blend (several): workspace file "
        "references from earlier steps, workspace paths, http(s) URLs or data URIs.",
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
    num_images: int = Field(
        default=1,
        title="Number of images",
        description="How many variations to create. Adjusted to the model's supported range "
        "(reported in the result).",
    )
    negative_prompt: str | None = Field(
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

    images: list[str] = Field(title="Images", description="Workspace file references.")
    cached: bool = Field(
        default=False,
        title="From cache",
        description="True when an identical earlier result was returned.",
    )


def model_choices(profiles: dict[str, ModelProfile]) -> list[str]:
    """'default' first, then the embedded model, then the other families."""
    names = [p.name for p in profiles.values() if p.default_model]
    names.sort(key=lambda n: (n != "embedded", n))
    return ["default", *names]


class ImageGeneration(Node):
    id = "image_generation"
    version = "1.0.0"
    title = "Image Generation"
    description = (
        "Create a new image from a text prompt, or edit existing images, with automatic "
        "model routing, safe aspect-ratio fallbacks and image-count guardrails."
    )
    category = "image"
    Input = ImageGenerationInput
    Output = ImageGenerationOutput
    connections = (PIXELML_CONNECTION,)
    field_codes: ClassVar[dict[str, str]] = {
        **SEED_FIELD_CODES,
        "image_sources": "SOURCE_IMAGE_ERROR",
    }

    @classmethod
    def input_schema(cls, host: Any = None) -> dict[str, Any]:
        schema = cls.Input.model_json_schema()
        if host is not None:
            schema["properties"]["model"]["enum"] = model_choices(host.registry.profiles)
        return schema

    def run(self, inputs: ImageGenerationInput, ctx: RunContext) -> ImageGenerationOutput:
        profiles = ctx.engine.profiles
        choices = model_choices(profiles)
        if inputs.model not in choices:
            raise InputError(
                f"model must be one of: {', '.join(choices)} (got {inputs.model!r})", field="model"
            )
        conn = ctx.connection()
        model = None if inputs.model == "default" else inputs.model
        resolved = ctx.engine.resolve(conn, model)  # type: ignore[arg-type]
        profile = resolved.profile

        aspect = inputs.aspect_ratio
        if aspect not in RATIOS:
            ctx.notice(
                Notice(
                    nc.ASPECT_RATIO_FALLBACK,
                    "aspect_ratio",
                    aspect,
                    DEFAULT_ASPECT,
                    f"supported ratios are {', '.join(RATIOS)}",
                )
            )
            aspect = DEFAULT_ASPECT
        rw, rh = RATIOS[aspect]
        long_side = SIZES[inputs.image_size] or profile.native_resolution
        if rw >= rh:
            width, height = long_side, round_to_multiple(long_side * rh / rw, profile.size_multiple)
        else:
            width, height = round_to_multiple(long_side * rw / rh, profile.size_multiple), long_side
        width, height, size_notes = fit_size(width, height, profile, field="image_size")
        for notice in size_notes:
            ctx.notice(notice)

        count = min(max(inputs.num_images, 1), profile.max_images_per_call)
        if count != inputs.num_images:
            ctx.notice(
                Notice(
                    nc.IMAGE_COUNT_CLAMPED,
                    "num_images",
                    inputs.num_images,
                    count,
                    f"{profile.title} makes 1–{profile.max_images_per_call} images",
                )
            )

        init = None
        if inputs.image_sources:
            images = [
                ctx.load_image(src, field=f"image_sources.{i}")
                for i, src in enumerate(inputs.image_sources)
            ]
            init = images[0] if len(images) == 1 else _blend(images, (width, height))
            if len(images) > 1:
                ctx.notice(
                    Notice(
                        nc.IMAGES_BLENDED,
                        "image_sources",
                        len(images),
                        1,
                        "several sources are averaged into one init image",
                    )
                )

        cache_key = None
        if inputs.use_cache and inputs.seed is not None:
            cache_key = _cache_key(inputs, resolved.source, profile.name, init)
            hit = _cached(ctx, cache_key)
            if hit is not None:
                ctx.notice(
                    Notice(
                        nc.CACHED_RESULT,
                        None,
                        "generate",
                        "stored result",
                        "identical request with a fixed seed (use_cache=true)",
                    )
                )
                ctx.seeds.extend(inputs.seed + i for i in range(len(hit)))
                return ImageGenerationOutput(images=hit, cached=True)

        request = GenerationRequest(
            task=IMAGE_TO_IMAGE if init is not None else TEXT_TO_IMAGE,
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            strength=inputs.strength if init is not None else None,
            width=width,
            height=height,
            num_images=count,
            seed=inputs.seed,
            image=init,
            explicit=frozenset(inputs.model_fields_set),
        )
        result = ctx.generate(request, model=model)
        refs = ctx.store_generation(result, {"aspect_ratio": aspect})
        if cache_key is not None:
            ctx.after_commit(
                lambda: ctx.workspace.write_json(
                    f"{CACHE_DIR}/{cache_key}.json", {"images": refs, "run_id": ctx.run_id}
                )
            )
        return ImageGenerationOutput(images=refs)


def _blend(images: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    arrays = [
        np.asarray(im.convert("RGB").resize(size, Image.Resampling.LANCZOS), np.float32)
        for im in images
    ]
    return Image.fromarray(np.clip(np.mean(arrays, axis=0), 0, 255).astype(np.uint8))


def _cache_key(
    inputs: ImageGenerationInput, source: str, profile: str, init: Image.Image | None
) -> str:
    """Hash of everything that determines the pixels, including the init image's
    pixels (a reference can point at a file that changed since)."""
    payload = inputs.model_dump(mode="json", exclude={"use_cache", "image_sources"})
    payload.update(model_source=source, profile=profile, node_version=ImageGeneration.version)
    if init is not None:
        payload["init_sha256"] = hashlib.sha256(init.tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cached(ctx: RunContext, key: str) -> list[str] | None:
    rel = f"{CACHE_DIR}/{key}.json"
    if not ctx.workspace.exists(rel):
        return None
    refs = ctx.workspace.read_json(rel).get("images") or []
    if refs and all(ctx.workspace.exists(ref) for ref in refs):
        return list(refs)
    return None


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(ImageGeneration)
