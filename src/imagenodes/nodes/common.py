"""Field types and schema helpers shared by the built-in nodes.

Validators here are ``AfterValidator``s on purpose: they add checks (non-empty
prompt, non-negative size) without adding keywords to the JSON Schema, because the
seed nodes' schemas must stay exactly the seeds' schemas.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo

from imagenodes.sdk import (
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    ConnectionRequirement,
    InvalidDimensions,
    Prompt,
    coded,
)

#: The seeds' nodes require a "PixelML Connection": here it configures the local
#: diffusers runtime (connection category ``pixelml``).  Product-specific, so it lives
#: beside the seed nodes rather than in the generic node contract.
PIXELML_CONNECTION = ConnectionRequirement(
    name="PixelML Connection",
    description="The PixelML connection to call PixelML API.",
    category="pixelml",
    required=True,
)


def _shown(value: int) -> str:
    """A refused integer as a message shows it (a 70-digit one abridged)."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}…{text[-6:]} ({len(text)} digits)"


def _source_side(value: int, info: ValidationInfo) -> int:
    if value < 0:
        raise ValueError(f"must be ≥ 0 (0 = use the source image's size), got {_shown(value)}")
    if value > MAX_SIDE:
        raise coded(
            InvalidDimensions(
                f"{info.field_name} must be at most {MAX_SIDE} px (0 = use the source "
                f"image's size), got {_shown(value)}"
            )
        )
    return value


#: image_to_image's ``width``/``height``: 0 (the source's size) up to ``MAX_SIDE``.  The
#: seed's schema gives no maximum and must stay the seed's, so the bounds are a
#: validator: below 0 is INVALID_INPUT (as it always was), past ``MAX_SIDE``
#: INVALID_DIMENSIONS naming the field; without it 2**40 reached the resize and failed
#: there as GENERATION_FAILED.
NonNegativeSize = Annotated[int, AfterValidator(_source_side)]


def _image_count(value: int) -> int:
    if not 0 <= value <= MAX_IMAGES:
        raise ValueError(
            f"must be between 0 and {MAX_IMAGES}; a count the model cannot make in one "
            f"call is clamped to its range (reported), got {_shown(value)}"
        )
    return value


#: image_generation's ``num_images``: the seed clamps a count to the model's range (a
#: notice, never an error), so any plausible count is taken; past ``MAX_IMAGES`` (or
#: below 0) it is no count at all, and BATCH_SIZE_EXCEEDED names it.  A validator, so
#: the published schema stays as it was.
ImageCount = Annotated[int, AfterValidator(_image_count)]


def _drop_additional_properties(schema: dict[str, Any]) -> None:
    schema.pop("additionalProperties", None)


def seed_model_config(title: str) -> ConfigDict:
    """Config for models whose schema must equal a seed's: extra fields are still
    refused at validation, but the published schema carries no additionalProperties
    keyword because the seed's does not."""
    return ConfigDict(extra="forbid", title=title, json_schema_extra=_drop_additional_properties)


PROMPT_DESCRIPTION = (
    "What you wish to see in the output image. A strong, descriptive prompt that clearly "
    "defines elements, colors, and subjects will lead to better results."
)
NEGATIVE_PROMPT_DESCRIPTION = (
    "A blurb of text describing what you do not wish to see in the output image."
)

#: Field → error code of the seeds' error tables (see Node.field_codes).
SEED_FIELD_CODES = {
    "prompt": "EMPTY_PROMPT",
    "guidance_scale": "INVALID_GUIDANCE_SCALE",
    "image_guidance_scale": "INVALID_GUIDANCE_SCALE",
    "steps": "INVALID_STEPS",
    "batch_size": "BATCH_SIZE_EXCEEDED",
    "aspect_ratio": "INVALID_ASPECT_RATIO",
    "strength": "INVALID_STRENGTH",
}


__all__ = ["PIXELML_CONNECTION", "ImageCount", "NonNegativeSize", "Prompt"]


# -- the fields seeds 000 and 001 share, word for word ---------------------------------
def prompt_field() -> Any:
    return Field(title="Prompt", description=PROMPT_DESCRIPTION)


def negative_prompt_field() -> Any:
    return Field(title="Negative Prompt", description=NEGATIVE_PROMPT_DESCRIPTION)


def guidance_field(default: float) -> Any:
    return Field(
        default=default,
        gt=0,
        le=15,
        title="Guidance scale",
        description="The guidance scale of the generated image.",
    )


def steps_field() -> Any:
    return Field(
        default=20,
        gt=0,
        le=50,
        title="Steps",
        description="The number of steps to take in the generated image.",
    )


def batch_size_field() -> Any:
    return Field(
        default=1,
        gt=0,
        le=8,
        title="Batch size",
        description="The number of images to generate in a batch.",
    )


def _seed_range(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be between 0 and {MAX_SEED} (a 32-bit seed), got {value}")
    return value


#: The seeds' ``seed``: any integer in the schema (it must stay the seed's), 32 bits
#: at validation, so an out-of-range seed is INVALID_INPUT, not a generator overflow.
Seed = Annotated[int | None, AfterValidator(_seed_range)]


def seed_field() -> Any:
    return Field(default=None, title="Seed", description="The seed to use for the generated image.")


def images_output_field() -> Any:
    return Field(title="Image output")
