"""ImageJob: what a node wants generated, in the node's terms, before any routing.

A node describes its request once — prompts, a size *intent*, a count and how to
treat a count the model cannot make, the sampling parameters, source images, a
training — and hands it to ``ctx.models.generate``.  The engine then routes the job
to a family and fits it (``engine.routing.adapt``): that is the one place where a
size is capped or rounded, a count clamped or split, a parameter dropped or clamped,
and each such change becomes exactly one :class:`Notice`.

Torch-free on purpose: the SDK re-exports these types, and importing the SDK must
stay cheap for node packs that never generate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel

from imagenodes.engine.notices import Notice
from imagenodes.errors import ImageNodesError, InputError, InvalidDimensions

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
INSTRUCT_EDIT = "instruction-edit"

#: Long side of seed 000's tiers: ``_HD`` 1024 px, ``_FHD`` 1920 px, plain = native.
TIERS: dict[str, int | None] = {"": None, "_HD": 1024, "_FHD": 1920}

#: The longest side a job may ask to have delivered: 2048 px, the largest size a
#: built-in family generates and the largest any built-in node's schema allows (a
#: family whose ``max_resolution`` is larger raises it to that).  A larger side is
#: INVALID_DIMENSIONS before anything loads: a resize to 2**40 px overflows, one to
#: 100 000 px takes the machine's memory.
MAX_SIDE = 2048
#: The most images one job may ask for (image_generator's largest run, 100 requests
#: of 4, fits); more is BATCH_SIZE_EXCEEDED.
MAX_IMAGES = 512
#: The largest seed a generator takes (torch's ``manual_seed``: 64 bits unsigned).
MAX_GENERATOR_SEED = 2**64 - 1


@dataclass(frozen=True)
class Aspect:
    """A ratio of the aspect table (``"16:9"``) at a long side (None = model's native).

    ``fallback`` is the ratio used, with an ``ASPECT_RATIO_FALLBACK`` notice, when
    ``ratio`` is not in the table; without one an unknown ratio is an error.
    ``field`` names the input in that notice, ``size_field`` (default ``field``) in
    the notice of a size the model cannot produce.
    """

    ratio: str
    long_side: int | None = None
    fallback: str | None = None
    field: str = "aspect_ratio"
    size_field: str | None = None

    @classmethod
    def parse(cls, value: str, **options: Any) -> Aspect:
        """``"9:16_HD"`` → ``Aspect("9:16", 1024)``; a plain ratio keeps the native side."""
        for suffix, long_side in TIERS.items():
            if suffix and value.endswith(suffix):
                return cls(value[: -len(suffix)], long_side, **options)
        return cls(value, None, **options)


@dataclass(frozen=True)
class Exact:
    """Exactly ``width`` × ``height``, fitted to the model's multiple and maximum.

    With ``resample`` the delivered images are resized back to exactly the requested
    size when the model had to generate another one (``SIZE_RESAMPLED``).
    """

    width: int
    height: int
    resample: bool = False
    field: str = "width/height"


@dataclass(frozen=True)
class FromSource:
    """The first source image's size; a non-zero side overrides it (one side 0 keeps
    the source's aspect ratio)."""

    width: int = 0
    height: int = 0
    field: str = "width/height"


Size = Aspect | Exact | FromSource


@dataclass(frozen=True)
class Training:
    """A trained adapter (diffusers LoRA folder) applied at ``scale``."""

    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class ImageJob:
    """One generation request of a node.

    ``prompt`` is one prompt for ``count`` images, or one prompt per image (then
    ``count`` is the number of prompts and ``seeds`` may give one seed per image).
    ``task`` None means: text-to-image without sources, image-to-image with them
    (several sources are blended into one init image, with a notice).
    ``count_policy`` says what to do when the family makes fewer images per call:
    ``split`` into several calls (the images are the same), or ``clamp`` the count
    (``IMAGE_COUNT_CLAMPED``).  ``explicit`` names the inputs the user set: dropping
    one of those for a family that cannot use it is a notice, while an untouched
    default is simply not passed on — build it with :meth:`of`.
    """

    prompt: str | Sequence[str]
    negative_prompt: str | Sequence[str] | None = None
    prompt_2: str | None = None
    task: str | None = None
    size: Size | None = None
    count: int = 1
    count_policy: Literal["split", "clamp"] = "split"
    count_field: str = "batch_size"
    seed: int | None = None
    seeds: Sequence[int] | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None
    sources: Sequence[Image.Image] = ()
    sources_field: str = "image_sources"
    training: Training | None = None
    precision: str | None = None
    #: A model spec (preset name, hub id, folder) instead of the connection's model.
    model: str | None = None
    #: The input field ``model`` came from, when a caller chose it: the spec is then
    #: held to the connection's model policy and errors name this field.  None: the
    #: node's own choice (a training's base model, an enum of families).
    model_field: str | None = None
    explicit: frozenset[str] = frozenset()

    @classmethod
    def of(cls, inputs: BaseModel, **params: Any) -> ImageJob:
        """A job for a node's validated ``inputs``: ``explicit`` is the fields the caller
        actually set (the one helper every node uses for it)."""
        return cls(explicit=frozenset(inputs.model_fields_set), **params)


@dataclass(frozen=True)
class ModelInfo:
    """A model spec routed to its family (what ``ctx.models.lookup`` tells a node)."""

    name: str
    profile: str
    profile_title: str
    #: The folder or hub id the pipeline loads from (two spellings of one model share it).
    source: str


@dataclass
class Generation:
    """What ``ctx.models.generate`` returns: the images and how they were made."""

    images: list[Image.Image]
    seeds: list[int]
    #: The effective parameters after adaptation, JSON-ready (PNG metadata, run.json).
    params: dict[str, Any]
    model: ModelInfo
    generated_size: tuple[int, int]
    notices: list[Notice] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    pipeline_calls: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None


def _shown(value: object) -> str:
    """A refused number as a message shows it: abridged (a 70-digit integer is not
    echoed back whole)."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:10]}…{text[-6:]} ({len(text)} digits)"


def _side_fields(size: Exact | FromSource) -> tuple[str, str]:
    """The input fields of a size's width and height (``width/height`` → both)."""
    first, _, second = size.field.partition("/")
    return first, second or first


def check_bounds(job: ImageJob, *, max_side: int = MAX_SIDE) -> None:
    """Refuse every integer of ``job`` the engine could not honour, with a coded error
    naming its field — before anything is routed to a pipeline or loaded.

    The built-in nodes' schemas and validators keep their inputs within these bounds
    already; this is the engine's own boundary, for every node a pack may add:

    * a size's sides (``Exact``, ``FromSource`` — 0 there means "from the source" —
      and an ``Aspect``'s long side) at most ``max_side``: INVALID_DIMENSIONS naming
      ``width`` or ``height`` (the size's own field names);
    * the image count, 1 to :data:`MAX_IMAGES` where it is made as asked (``split``
      or one prompt per image): BATCH_SIZE_EXCEEDED naming the count's field; a
      ``clamp`` count is clamped (a notice) from 0 up, but not past MAX_IMAGES;
    * seeds, 0 to :data:`MAX_GENERATOR_SEED` including ``seed + i`` of the last image:
      INVALID_INPUT naming ``seed``.
    """
    size = job.size
    if isinstance(size, Exact | FromSource):
        least = 1 if isinstance(size, Exact) else 0
        for name, value in zip(_side_fields(size), (size.width, size.height), strict=True):
            if not least <= value <= max_side:
                raise InvalidDimensions(
                    f"{name} must be between {least} and {max_side} px (got {_shown(value)})",
                    field=name,
                )
    elif isinstance(size, Aspect) and size.long_side is not None:
        name = size.size_field or size.field
        if not 1 <= size.long_side <= max_side:
            raise InvalidDimensions(
                f"{name}: the long side must be between 1 and {max_side} px "
                f"(got {_shown(size.long_side)})",
                field=name,
            )
    count = job.count if isinstance(job.prompt, str) else len(job.prompt)
    least = 0 if isinstance(job.prompt, str) and job.count_policy == "clamp" else 1
    if count > MAX_IMAGES:
        raise ImageNodesError(
            f"{job.count_field} must be at most {MAX_IMAGES} images (got {_shown(count)})",
            code="BATCH_SIZE_EXCEEDED",
            field=job.count_field,
        )
    if count < least:
        raise InputError(
            f"{job.count_field} must be at least {least} (got {_shown(count)})",
            field=job.count_field,
        )
    # (seed, what a message shows): image i uses seed + i unless seeds are given.
    seeds = [(seed, seed) for seed in job.seeds or ()]
    if job.seed is not None:
        seeds.append((job.seed, job.seed))
        if job.seeds is None:
            seeds.append((job.seed + max(count, 1) - 1, job.seed))
    for seed, shown in seeds:
        if not 0 <= seed <= MAX_GENERATOR_SEED:
            raise InputError(
                f"seed must be between 0 and {MAX_GENERATOR_SEED} (a 64-bit generator seed; "
                f"image i uses seed + i), got {_shown(shown)}",
                field="seed",
            )
