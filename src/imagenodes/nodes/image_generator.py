"""image_generator (seed 003, the flows' "ImageGenerator" step): many image requests, batched.

Field names and defaults are the seed's (camelCase, as flows write them).  Each image
request picks its model as ``image.baseModel`` → global ``baseModel`` → the
training's recorded base model → the connection's model, and its adapter as
``image.trainingId`` → global ``trainingId``.  A training "takes precedence over
baseModel" in the seed's sense: with a training the images come from the trained
adapter (applied at ``scale``) on top of the chosen base.

Execution is batched as the seed's best-practice section asks: requests that share
(model, training, scale, size, steps, guidance, precision) form one group, and each
group is a single engine request with one prompt and one seed per image, which the
engine splits only where the family's per-call limit requires.  Every image keeps
its own seed, so grouping never changes a picture.  See docs/image_generator.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field

from imagenodes.nodes.common import NEGATIVE_PROMPT_DESCRIPTION, PIXELML_CONNECTION
from imagenodes.sdk import (
    MAX_SEED,
    ConnectionConfigError,
    Exact,
    ImageJob,
    ImageNodesError,
    ImageRef,
    InputError,
    ModelInfo,
    Node,
    NodeInput,
    NodeOutput,
    Notice,
    Prompt,
    RunContext,
    Text,
    Training,
    draw_seed,
    hookimpl,
)

#: Limits the seed leaves open, picked here (documented in docs/image_generator.md).
MAX_STEPS = 60  # the seed's "number (60)": read as the maximum
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 8, 2048, 8
MAX_REQUESTS = 100  # requests per run after merging the pack (≤ 400 images)
#: Notice code: the chosen base model is not the one the training was made on.
TRAINING_BASE_MODEL = "TRAINING_BASE_MODEL"

IMAGE_FIELD_CODES: dict[str, str] = {
    "prompt": "EMPTY_PROMPT",
    "steps": "INVALID_STEPS",
    "width": "INVALID_DIMENSIONS",
    "height": "INVALID_DIMENSIONS",
    "guidanceScale": "INVALID_GUIDANCE_SCALE",
    "batchSize": "BATCH_SIZE_EXCEEDED",
}


def _multiple_of_size(value: int) -> int:
    """Multiple-of-8 check with a message naming the whole allowed range.

    A validator rather than pydantic's ``multiple_of``: the generic message names only
    the multiple, which reads wrong next to the min/max the form shows.
    """
    if value % SIZE_MULTIPLE:
        raise ValueError(
            f"must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE} (got {value})"
        )
    return value


Dimension = Annotated[int, AfterValidator(_multiple_of_size)]

_SIZE_DESCRIPTION = (
    f"must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}. Models that "
    "cannot produce the size use the nearest size they can (reported as a notice)."
)


class ImageRequest(NodeInput):
    """One image request (an item of ``images``, or of an inference pack)."""

    model_config = ConfigDict(extra="forbid", title="Image")

    prompt: Prompt = Field(
        title="Prompt", description="A textual prompt describing what to generate."
    )
    baseModel: str | None = Field(
        default=None,
        title="Base model",
        description="A Hugging Face model id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), "
        "a model family name, or a folder under the connection's models_dir; overrides the "
        "global baseModel. Without any, the training's base model or the connection's model "
        "is used.",
    )
    trainingId: str | None = Field(
        default=None,
        title="Training id",
        description="UUID of a training registered in the workspace (`imagenodes trainings "
        "add`). Takes precedence over baseModel: the trained adapter is applied.",
    )
    negativePrompt: Text | None = Field(
        default=None, title="Negative prompt", description=NEGATIVE_PROMPT_DESCRIPTION
    )
    steps: int = Field(
        default=25,
        ge=1,
        le=MAX_STEPS,
        title="Steps",
        description="Number of diffusion steps. Higher = more detailed images but slower.",
    )
    width: Dimension = Field(
        default=1024,
        ge=MIN_SIZE,
        le=MAX_SIZE,
        title="Width",
        description=f"Image width; {_SIZE_DESCRIPTION}",
        json_schema_extra={"multipleOf": SIZE_MULTIPLE},
    )
    height: Dimension = Field(
        default=1024,
        ge=MIN_SIZE,
        le=MAX_SIZE,
        title="Height",
        description=f"Image height; {_SIZE_DESCRIPTION}",
        json_schema_extra={"multipleOf": SIZE_MULTIPLE},
    )
    scale: float = Field(
        default=0.9,
        ge=0,
        le=1,
        title="Scale",
        description="Weight of the training's adapter (0 = the base model alone). "
        "Typically keep at 0.9 for stable results.",
    )
    guidanceScale: float = Field(
        default=7.5,
        ge=0,
        le=10,
        title="Guidance scale",
        description="Strength of prompt conditioning (CFG scale). High values = stricter "
        "adherence to your prompt.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        title="Seed",
        description="Seed for deterministic outputs; image k of the batch uses seed + k. "
        "Leave blank for random.",
    )
    batchSize: int = Field(
        default=1,
        ge=1,
        le=4,
        title="Batch size",
        description="Generate multiple images from a single prompt (in a single pass).",
    )
    precision: Literal["fp16", "bf16"] = Field(
        default="fp16",
        title="Precision",
        description="Mixed precision. Generally keep at fp16 unless you have a reason to use "
        "bf16 (CPUs always compute in fp32; reported as a notice).",
    )


class ImageGeneratorInput(NodeInput):
    """Generate images from a list of requests, a saved inference pack, or both."""

    images: list[ImageRequest] = Field(
        default_factory=list,
        title="Images",
        description="A list of objects describing the images to be generated.",
    )
    trainingId: str | None = Field(
        default=None,
        title="Training id",
        description="A global trainingId applied to all images, unless specified "
        "individually on the image object.",
    )
    baseModel: str | None = Field(
        default=None,
        title="Base model",
        description="A global baseModel applied to all images, unless specified "
        "individually on the image object.",
    )
    inferencePackId: str | None = Field(
        default=None,
        title="Inference pack id",
        description="UUID of a stored inference pack; its requests run first, then the "
        "images given here.",
    )


class RequestResult(NodeOutput):
    """The images of one request, in the order the requests were merged."""

    source: Literal["pack", "images"] = Field(
        description="'pack' for a request from the inference pack, 'images' for one given."
    )
    index: int = Field(description="Position of the request within its source list.")
    prompt: str
    model: str = Field(description="The model that generated the images.")
    trainingId: str | None = None
    scale: float | None = Field(default=None, description="Adapter weight (with a training).")
    width: int
    height: int
    seeds: list[int]
    images: list[ImageRef] = Field(description="Workspace file references.")


class ImageGeneratorOutput(NodeOutput):
    """All images (flat, request order) and the same images grouped per request."""

    images: list[ImageRef] = Field(title="Images", description="Every image, in request order.")
    requests: list[RequestResult] = Field(title="Per request")
    pipelineCalls: int = Field(title="Pipeline calls", description="Diffusers calls made.")
    groups: int = Field(title="Groups", description="Batches the requests were grouped into.")


@dataclass
class _Planned:
    """One merged request with everything resolved before any generation starts."""

    source: Literal["pack", "images"]
    index: int
    where: str  # field prefix for errors: images.3 / pack.images.0
    request: ImageRequest
    spec: str | None = None
    #: The input field ``spec`` came from when the caller named it (baseModel): the
    #: connection's model policy applies.  None: the connection's or a training's.
    spec_field: str | None = None
    resolved: ModelInfo | None = None
    training: dict[str, Any] | None = None
    lora_path: str | None = None
    seeds: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)


class ImageGenerator(Node[ImageGeneratorInput, ImageGeneratorOutput]):
    id = "image_generator"
    version = "1.0.0"
    title = "Image Generator"
    description = (
        "Produce images from a base model or a trained adapter: a list of image requests "
        "(prompt, negative prompt, size, steps, guidance, seed, batch size), optionally "
        "merged with a saved inference pack, generated in as few batched calls as possible."
    )
    category = "image"
    connections = (PIXELML_CONNECTION,)
    #: Inference packs hold requests of this shape (validated by this model).
    pack_request = ImageRequest
    field_codes: ClassVar[dict[str, str]] = IMAGE_FIELD_CODES
    # The shared texts name seed 000's ranges (guidance 0–15, 50 steps, 8 images).
    solutions: ClassVar[dict[str, str]] = {
        "INVALID_GUIDANCE_SCALE": "Set guidanceScale between 0 and 10 (default 7.5)",
        "INVALID_STEPS": f"Set steps between 1 and {MAX_STEPS} (default 25)",
        "BATCH_SIZE_EXCEEDED": f"Set batchSize between 1 and 4, with at most {MAX_REQUESTS} "
        "requests per run (inference pack included)",
        "INVALID_DIMENSIONS": f"Set width and height to multiples of {SIZE_MULTIPLE} between "
        f"{MIN_SIZE} and {MAX_SIZE}",
    }

    @classmethod
    def with_seeds(cls, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Each image request without a seed gets one (the pack's requests are drawn
        when the run merges them, so a retry of a pack run draws them anew)."""
        out = dict(inputs)
        if isinstance(out.get("images"), list):
            out["images"] = [
                {**item, "seed": draw_seed()}
                if isinstance(item, Mapping) and item.get("seed") is None
                else item
                for item in out["images"]
            ]
        return out

    def run(self, inputs: ImageGeneratorInput, ctx: RunContext) -> ImageGeneratorOutput:
        plan = self._merge(inputs, ctx)
        self._route(plan, inputs, ctx)
        groups = group_requests(plan)
        calls = 0
        for members in groups.values():
            calls += self._generate_group(members, ctx)
        return ImageGeneratorOutput(
            images=[ref for p in plan for ref in p.images],
            requests=[
                RequestResult(
                    source=p.source,
                    index=p.index,
                    prompt=p.request.prompt,
                    model=p.resolved.name if p.resolved else "",
                    trainingId=p.training["id"] if p.training else None,
                    scale=p.request.scale if p.training else None,
                    width=p.size[0],
                    height=p.size[1],
                    seeds=p.seeds,
                    images=p.images,
                )
                for p in plan
            ],
            pipelineCalls=calls,
            groups=len(groups),
        )

    # -- planning -------------------------------------------------------------------
    @staticmethod
    def _merge(inputs: ImageGeneratorInput, ctx: RunContext) -> list[_Planned]:
        """The pack's requests first, then the given images (the seed: "every prompt in
        the pack plus any additional ones you specify")."""
        plan: list[_Planned] = []
        if inputs.inferencePackId:
            pack = ctx.library.packs.get(inputs.inferencePackId)
            for i, raw in enumerate(pack.get("images") or []):
                try:
                    request = ImageRequest.model_validate(raw)
                except ValueError as exc:
                    raise InputError(
                        f"inference pack {pack['id']} request {i} is no longer valid: {exc}",
                        field=f"inferencePackId.images.{i}",
                    ) from None
                plan.append(_Planned("pack", i, f"pack.images.{i}", request))
        plan.extend(
            _Planned("images", i, f"images.{i}", request) for i, request in enumerate(inputs.images)
        )
        if not plan:
            raise InputError(
                "nothing to generate: give at least one image request in images, or an "
                "inferencePackId of a pack with requests",
                field="images",
            )
        if len(plan) > MAX_REQUESTS:
            raise ImageNodesError(
                f"images: {len(plan)} requests (pack included) exceed the limit of "
                f"{MAX_REQUESTS} per run; split them over several runs",
                code="BATCH_SIZE_EXCEEDED",
                field="images",
            )
        return plan

    @staticmethod
    def _route(plan: list[_Planned], inputs: ImageGeneratorInput, ctx: RunContext) -> None:
        """Trainings and models of every request, before anything is generated, so a bad
        id in request 40 fails the run before 39 requests were computed for nothing."""
        trainings = ctx.library.trainings
        models: dict[tuple[str | None, bool], ModelInfo] = {}
        for item in plan:
            req = item.request
            if req.trainingId:
                item.training = trainings.get(req.trainingId, field=f"{item.where}.trainingId")
                item.lora_path = trainings.weights_path(req.trainingId)
            elif inputs.trainingId:
                item.training = trainings.get(inputs.trainingId, field="trainingId")
                item.lora_path = trainings.weights_path(inputs.trainingId)
        for item in plan:
            req = item.request
            base = (item.training or {}).get("base_model")
            if req.baseModel:
                item.spec, where = req.baseModel, f"{item.where}.baseModel"
                item.spec_field = where
            elif inputs.baseModel:
                item.spec, where = inputs.baseModel, "baseModel"
                item.spec_field = where
            elif base:
                item.spec, where = base, f"{item.where}.trainingId"
            else:
                item.spec, where = None, "model"  # the connection's model
            key = (item.spec, item.spec_field is not None)
            if key not in models:
                try:
                    models[key] = ctx.models.lookup(item.spec, field=item.spec_field)
                except ConnectionConfigError as exc:
                    raise ConnectionConfigError(
                        f"{where}: {exc.message}", field=where, details=exc.details
                    ) from None
            item.resolved = models[key]
            if base and item.spec and item.spec != base:
                ctx.util.notice(
                    Notice(
                        TRAINING_BASE_MODEL,
                        where,
                        base,
                        item.spec,
                        f"training {item.training['id'] if item.training else ''} was made on "
                        f"{base}; generating on {item.spec} as asked",
                    )
                )

    # -- generation -----------------------------------------------------------------
    @staticmethod
    def _generate_group(members: list[_Planned], ctx: RunContext) -> int:
        first = members[0]
        req = first.request
        prompts: list[str] = []
        negatives: list[str] = []
        seeds: list[int] = []
        owners: list[tuple[_Planned, int]] = []
        for item in members:
            start = item.request.seed if item.request.seed is not None else draw_seed()
            for k in range(item.request.batchSize):
                prompts.append(item.request.prompt)
                negatives.append(item.request.negativePrompt or "")
                seeds.append((start + k) % (MAX_SEED + 1))
                owners.append((item, k))
        job = ImageJob(
            prompt=prompts,
            # "" is the pipelines' own unconditional prompt, so mixing requests with and
            # without a negative prompt in one call changes nothing for the latter.
            negative_prompt=negatives if any(negatives) else None,
            guidance_scale=req.guidanceScale,
            steps=req.steps,
            size=Exact(req.width, req.height),
            seed=seeds[0],
            seeds=seeds,
            precision=req.precision,
            training=Training(first.lora_path, req.scale) if first.lora_path else None,
            model=first.spec,
            model_field=first.spec_field,
            explicit=frozenset(
                name
                for item in members
                for name in item.request.model_fields_set
                if name in ("negativePrompt", "steps", "guidanceScale", "precision")
            ),
        )
        generation = ctx.models.generate(job)
        effective = generation.params
        for (item, k), image, seed in zip(owners, generation.images, generation.seeds, strict=True):
            meta = {
                "prompt": item.request.prompt,
                "negative_prompt": item.request.negativePrompt,
                "seed": seed,
                "model": generation.model.name,
                "profile": generation.model.profile,
                "training_id": item.training["id"] if item.training else None,
                "scale": item.request.scale if item.training else None,
                "steps": effective["steps"],
                "guidance_scale": effective["guidance_scale"],
                "width": image.width,
                "height": image.height,
                "precision": effective["precision"],
                "size": effective.get("size"),  # generated / delivered / method
                "request": f"{item.source}[{item.index}]",
                "batch_index": k,
            }
            name = f"{item.source}-{item.index:03d}-{k}.png"
            item.images.append(ctx.images.save(image, meta, name=name))
            item.seeds.append(seed)
            item.size = (image.width, image.height)
        return generation.pipeline_calls


def group_key(item: _Planned) -> tuple[Any, ...]:
    """What must be equal for requests to share pipeline calls.

    The model is keyed by its resolved folder (two spellings of one model batch
    together); the scale only matters with a training.
    """
    req = item.request
    training = item.training["id"] if item.training else None
    return (
        item.resolved.source if item.resolved else item.spec,
        training,
        req.scale if training else None,
        req.width,
        req.height,
        req.steps,
        req.guidanceScale,
        req.precision,
    )


def group_requests(plan: list[_Planned]) -> dict[tuple[Any, ...], list[_Planned]]:
    """Groups in order of first appearance (dicts keep insertion order)."""
    groups: dict[tuple[Any, ...], list[_Planned]] = {}
    for item in plan:
        groups.setdefault(group_key(item), []).append(item)
    return groups


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(ImageGenerator)
