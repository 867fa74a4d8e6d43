"""Adaptation: how a node's job is fitted to the model family it was routed to.

:func:`adapt` turns a node's :class:`~imagenodes.engine.job.ImageJob` into the
effective request for one family.  It is the only place that fits a size or a count
and drops or clamps a parameter; it never fails on a parameter the family cannot use
and never drops one silently: each change is exactly one
:class:`~imagenodes.engine.notices.Notice`.  Which family a model belongs to is
decided before, by :mod:`imagenodes.engine.resolve`.

The parameter rules are a table (:data:`RULES`), one row per rule, applied in order
to the request: a family's new quirk is a new row, not another copy of the
"unsupported → notice" block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from imagenodes.engine import notices as nc
from imagenodes.engine.aspect import DELIVERY_MULTIPLE, RATIOS, nominal_size, plan_size
from imagenodes.engine.job import (
    IMAGE_TO_IMAGE,
    INSTRUCT_EDIT,
    MAX_SIDE,
    TEXT_TO_IMAGE,
    Aspect,
    Exact,
    FromSource,
    ImageJob,
    check_bounds,
)
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import ModelProfile
from imagenodes.engine.request import GenerationRequest
from imagenodes.errors import GenerationFailed, InputError, InvalidDimensions


def _ignored(field: str, value: Any, profile: ModelProfile, why: str) -> Notice:
    return Notice(nc.PARAMETER_IGNORED, field, value, None, f"{profile.title}: {why}")


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def original_size(image: Image.Image) -> tuple[int, int]:
    """The size a source had before it was shrunk at decoding (the workspace records
    it as ``info["source_size"]``): a size "from the source" means the original."""
    size = image.info.get("source_size")
    if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return size
    return image.size


def source_size(source: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """0 = from the source; one side 0 keeps the source's aspect ratio."""
    sw, sh = source
    if width and height:
        return width, height
    if width:
        return width, max(1, round(width * sh / sw))
    if height:
        return max(1, round(height * sw / sh)), height
    return sw, sh


def blend(images: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """The pixel mean of several sources, each resized to ``size``: one init image."""
    import numpy as np

    arrays = [
        np.asarray(im.convert("RGB").resize(size, Image.Resampling.LANCZOS), np.float32)
        for im in images
    ]
    return Image.fromarray(np.clip(np.mean(arrays, axis=0), 0, 255).astype(np.uint8))


@dataclass
class Adapted:
    """A job fitted to one family: the request to run and what to deliver."""

    request: GenerationRequest
    notices: list[Notice]
    #: Resize the generated images to this size before returning them (Exact+resample).
    deliver: tuple[int, int] | None = None


def _fit_size(
    job: ImageJob, profile: ModelProfile, notices: list[Notice], policy: str
) -> tuple[int, int, tuple[int, int] | None]:
    """(generated width, height, delivered size or None): see ``aspect.plan_size``."""
    size = job.size
    first = job.sources[0] if job.sources else None
    if isinstance(size, Aspect):
        ratio = size.ratio
        if ratio not in RATIOS:
            if size.fallback is None:
                raise InputError(
                    f"{size.field} must be one of: {', '.join(RATIOS)} (got {ratio!r})",
                    code="INVALID_ASPECT_RATIO",
                    field=size.field,
                )
            notices.append(
                Notice(
                    nc.ASPECT_RATIO_FALLBACK,
                    size.field,
                    ratio,
                    size.fallback,
                    f"supported ratios are {', '.join(RATIOS)}",
                )
            )
            ratio = size.fallback
        multiple = DELIVERY_MULTIPLE if policy == "upscale" else None
        w, h = nominal_size(ratio, profile, long_side=size.long_side, multiple=multiple)
        field = size.size_field or size.field
    elif isinstance(size, Exact):
        w, h, field = size.width, size.height, size.field
    elif isinstance(size, FromSource):
        if first is None:
            raise GenerationFailed("a size from the source needs a source image", field="size")
        w, h = source_size(original_size(first), size.width, size.height)
        field = size.field
        _check_derived_side(size, (w, h), max_side_of(profile))
    elif first is not None:
        (w, h), field = original_size(first), "width/height"
    else:
        w = h = profile.native_resolution
        field = "width/height"
    plan = plan_size(
        w,
        h,
        profile,
        policy=policy,
        field=field,
        bucketed=isinstance(size, Aspect),
        exact=isinstance(size, Exact) and size.resample,
    )
    notices.extend(plan.notices)
    return plan.width, plan.height, plan.deliver


def max_side_of(profile: ModelProfile) -> int:
    """The longest side a job on ``profile`` may ask for: :data:`MAX_SIDE`, or the
    family's own maximum where it generates larger."""
    return max(MAX_SIDE, profile.max_resolution)


def _check_derived_side(size: FromSource, got: tuple[int, int], max_side: int) -> None:
    """One side given, the other from the source's aspect ratio: a thin source can make
    that one huge (width 2048 of an 8×2048 source is a height of 524 288), so it is
    held to the same bound, naming the field that would set it."""
    if not (size.width or size.height) or (size.width and size.height):
        return  # both from the source (bounded by the pixel cap) or both given
    first, _, second = size.field.partition("/")
    name, value = (second or first, got[1]) if size.width else (first, got[0])
    if value > max_side:
        raise InvalidDimensions(
            f"{name} would be {value} px to keep the source's aspect ratio, more than "
            f"{max_side}; set {name} as well (at most {max_side})",
            field=name,
        )


def _fit_count(job: ImageJob, profile: ModelProfile, notices: list[Notice]) -> int:
    if not isinstance(job.prompt, str):
        return len(job.prompt)
    if job.count_policy == "split":
        return job.count  # the engine splits calls at the family's limit; same images
    count = min(max(job.count, 1), profile.max_images_per_call)
    if count != job.count:
        notices.append(
            Notice(
                nc.IMAGE_COUNT_CLAMPED,
                job.count_field,
                job.count,
                count,
                f"{profile.title} makes 1–{profile.max_images_per_call} images",
            )
        )
    return count


# -- the parameter rules -----------------------------------------------------------------
#: One rule: it reads and changes the request for a family (on a device) and returns
#: the notices of what it changed, in the order they happened.
Rule = Callable[[GenerationRequest, ModelProfile, str], list[Notice]]


def _given(value: Any) -> bool:
    return value is not None


def _always(value: Any, out: GenerationRequest) -> bool:
    return True


@dataclass(frozen=True)
class Unsupported:
    """A parameter the family cannot use (``field`` not in ``profile.supports``): when
    ``given`` it is dropped, with a PARAMETER_IGNORED notice when ``reported``."""

    field: str
    why: str
    #: Whether the value is there to drop at all.
    given: Callable[[Any], bool] = _given
    #: Whether dropping it is a change the caller would miss: a node's untouched default
    #: (see ``GenerationRequest.explicit``) is dropped without a notice.
    reported: Callable[[Any, GenerationRequest], bool] = _always

    def __call__(self, out: GenerationRequest, profile: ModelProfile, device: str) -> list[Notice]:
        value = getattr(out, self.field)
        if self.field in profile.supports or not self.given(value):
            return []
        setattr(out, self.field, None)
        if not self.reported(value, out):
            return []
        return [_ignored(self.field, value, profile, self.why)]


@dataclass(frozen=True)
class InRange:
    """A parameter the family takes within a range: unset → the family's default;
    outside → clamped, with one ``code`` notice (``why`` formats ``title``, ``lo``,
    ``hi``)."""

    field: str
    code: str
    default: Callable[[ModelProfile], float]
    bounds: Callable[[ModelProfile], tuple[float, float]]
    why: str
    integer: bool = False

    def __call__(self, out: GenerationRequest, profile: ModelProfile, device: str) -> list[Notice]:
        value = getattr(out, self.field)
        if value is None:
            value = self.default(profile)
            setattr(out, self.field, value)
        lo, hi = self.bounds(profile)
        if lo <= value <= hi:
            return []
        fitted = _clamp(value, lo, hi)
        if self.integer:
            fitted = int(fitted)
        setattr(out, self.field, fitted)
        why = self.why.format(title=profile.title, lo=lo, hi=hi)
        return [Notice(self.code, self.field, value, fitted, why)]


def _route_task(out: GenerationRequest, profile: ModelProfile, device: str) -> list[Notice]:
    """An image-to-image request on an instruction-edit family becomes an edit (which
    has no strength); a task the family cannot do at all is an error."""
    notices: list[Notice] = []
    if (
        out.task == IMAGE_TO_IMAGE
        and out.task not in profile.tasks
        and (INSTRUCT_EDIT in profile.tasks)
    ):
        why = f"{profile.title} edits images by instruction"
        notices.append(Notice(nc.TASK_ROUTED, "task", IMAGE_TO_IMAGE, INSTRUCT_EDIT, why))
        out.task = INSTRUCT_EDIT
        if out.strength is not None:
            why = "instruction edits use image_guidance_scale, not strength"
            notices.append(_ignored("strength", out.strength, profile, why))
            out.strength = None
    if out.task not in profile.tasks:
        raise GenerationFailed(
            f"{profile.title} cannot do {out.task}; it supports {', '.join(sorted(profile.tasks))}",
            field="model",
        )
    return notices


def _strength_makes_a_step(
    out: GenerationRequest, profile: ModelProfile, device: str
) -> list[Notice]:
    """Image-to-image denoises int(steps × strength) steps: at least one, or the
    pipeline fails on an empty schedule."""
    if out.task != IMAGE_TO_IMAGE or out.strength is None or not out.steps:
        return []
    if int(out.steps * out.strength) >= 1:
        return []
    raised = min(1.0, 1.0 / out.steps + 1e-6)
    why = f"strength × steps must be at least 1 denoising step ({out.strength} × {out.steps} < 1)"
    notice = Notice(nc.STRENGTH_RAISED, "strength", out.strength, round(raised, 4), why)
    out.strength = raised
    return [notice]


def _precision(out: GenerationRequest, profile: ModelProfile, device: str) -> list[Notice]:
    """Half precision is not used on CPU; elsewhere a dtype the family lacks falls back
    to its first one."""
    if not out.precision:
        return []
    wanted = {"fp16": "float16", "bf16": "bfloat16"}.get(out.precision, out.precision)
    if device == "cpu" and wanted != "float32":
        applied, why = "fp32", "half precision is not used on CPU (slow and lossy there)"
    elif wanted not in profile.dtypes:
        applied, why = profile.dtypes[0], f"{profile.title} runs in {profile.dtypes}"
    else:
        return []
    notice = Notice(nc.PRECISION_FALLBACK, "precision", out.precision, applied, why)
    out.precision = applied
    return [notice]


#: The parameter rules, one row each, applied in this order (the order of their
#: notices): the task first (an edit drops strength), ranges before the strength check
#: (which needs the step count), precision last.
RULES: tuple[Rule, ...] = (
    _route_task,
    Unsupported("negative_prompt", "this family has no negative prompt", given=bool),
    Unsupported(
        "prompt_2",
        "prompt_2 feeds a second text encoder this family lacks",
        reported=lambda value, out: "prompt_2" in out.explicit or bool(value),
    ),
    Unsupported(
        "image_guidance_scale",
        "only InstructPix2Pix models use image guidance",
        reported=lambda value, out: "image_guidance_scale" in out.explicit,
    ),
    InRange(
        "steps",
        nc.STEPS_CLAMPED,
        default=lambda p: p.default_steps,
        bounds=lambda p: p.steps_range,
        why="{title} works with {lo}–{hi} steps",
        integer=True,
    ),
    InRange(
        "guidance_scale",
        nc.GUIDANCE_CLAMPED,
        default=lambda p: p.default_guidance,
        bounds=lambda p: p.guidance_range,
        why="{title} uses guidance {lo}–{hi}",
    ),
    _strength_makes_a_step,
    _precision,
)


def _init_image(job: ImageJob, size: tuple[int, int], notices: list[Notice]) -> Image.Image | None:
    """The one init image: the source, or the blend of several (a notice)."""
    if not job.sources:
        return None
    if len(job.sources) == 1:
        return job.sources[0]
    why = "several sources are averaged into one init image"
    notices.append(Notice(nc.IMAGES_BLENDED, job.sources_field, len(job.sources), 1, why))
    return blend(list(job.sources), size)


def _request(
    job: ImageJob, width: int, height: int, count: int, init: Image.Image | None
) -> GenerationRequest:
    """The job as a request, before any rule: what the node asked for, sized."""
    return GenerationRequest(
        task=job.task or (IMAGE_TO_IMAGE if job.sources else TEXT_TO_IMAGE),
        prompt=job.prompt if isinstance(job.prompt, str) else list(job.prompt),
        negative_prompt=(
            job.negative_prompt
            if job.negative_prompt is None or isinstance(job.negative_prompt, str)
            else list(job.negative_prompt)
        ),
        prompt_2=job.prompt_2,
        guidance_scale=job.guidance_scale,
        image_guidance_scale=job.image_guidance_scale,
        steps=job.steps,
        width=width,
        height=height,
        num_images=count,
        seed=job.seed,
        seeds=list(job.seeds) if job.seeds is not None else None,
        image=init,
        strength=job.strength if init is not None else None,
        precision=job.precision,
        lora_path=job.training.path if job.training else None,
        lora_scale=job.training.scale if job.training else 1.0,
        explicit=job.explicit,
    )


def adapt(
    job: ImageJob, profile: ModelProfile, *, device: str = "cpu", size_policy: str = "upscale"
) -> Adapted:
    """Fit a node's job to a family: the effective request and one notice per change.

    Its integers are checked first (:func:`~imagenodes.engine.job.check_bounds`): a
    side past the family's bound, a count past the engine's or a seed past a
    generator's is a coded error naming the field, before anything loads.  Then the
    size, the count and the init image are fitted, and every row of :data:`RULES` is
    applied to the request."""
    check_bounds(job, max_side=max_side_of(profile))
    notices: list[Notice] = []
    width, height, deliver = _fit_size(job, profile, notices, size_policy)
    count = _fit_count(job, profile, notices)
    init = _init_image(job, (width, height), notices)
    out = _request(job, width, height, count, init)
    for rule in RULES:
        notices.extend(rule(out, profile, device))
    return Adapted(out, notices, deliver)
