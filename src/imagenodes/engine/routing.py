"""Routing: which family a model belongs to, and how a request is adapted to it.

Resolution order for a model spec: ``embedded`` / a profile preset name → that
profile's model; ``models_dir/<spec>`` → a local folder; an existing local folder; a
hub id (offline: only the local Hugging Face cache).  The family is then the forced
profile, else the highest-priority profile whose id pattern matches, else the profile
claiming ``model_index.json``'s ``_class_name``, else a generic profile when diffusers'
AutoPipeline knows the class.  Anything else is a CONNECTION_ERROR naming the class.

Adaptation (:func:`adapt`) turns a node's :class:`~imagenodes.engine.job.ImageJob`
into the effective request for one family.  It is the only place that fits a size
or a count and drops or clamps a parameter; it never fails on a parameter the family
cannot use and never drops one silently: each change is exactly one
:class:`~imagenodes.engine.notices.Notice`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imagenodes.engine import notices as nc
from imagenodes.engine.aspect import DELIVERY_MULTIPLE, RATIOS, nominal_size, plan_size
from imagenodes.engine.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from imagenodes.engine.job import (
    IMAGE_TO_IMAGE,
    INSTRUCT_EDIT,
    MAX_SIDE,
    TEXT_TO_IMAGE,
    Aspect,
    Exact,
    FromSource,
    ImageJob,
    ModelInfo,
    check_bounds,
)
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import ModelProfile
from imagenodes.engine.request import GenerationRequest
from imagenodes.errors import (
    ConnectionConfigError,
    GenerationFailed,
    InputError,
    InvalidDimensions,
)


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec routed to a loadable source and its family."""

    spec: str
    source: str  # local folder or hub id passed to from_pretrained
    class_name: str
    profile: ModelProfile

    @property
    def display_name(self) -> str:
        return EMBEDDED_MODEL_NAME if self.profile.name == "embedded" else self.spec

    def info(self) -> ModelInfo:
        """The public, torch-free description a node gets (``ctx.models.lookup``)."""
        return ModelInfo(
            name=self.display_name,
            profile=self.profile.name,
            profile_title=self.profile.title,
            source=self.source,
        )


def _hub_snapshot(repo_id: str, *, offline: bool, token: str | None) -> Path:
    """Local folder of a hub model: the HF cache when offline, else a download."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                local_files_only=offline,
                token=token,
                allow_patterns=None,
            )
        )
    except Exception as exc:
        how = (
            "is not in the local cache and the connection is offline"
            if offline
            else (f"could not be downloaded ({type(exc).__name__})")
        )
        raise ConnectionConfigError(
            f"model {repo_id!r} {how}; set the connection's model to a local folder or "
            "models_dir to a folder holding it",
            field="model",
        ) from None


#: A hub id as a caller may send it: ``org/name``, no path tricks.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def not_allowed(spec: str, profiles: Mapping[str, ModelProfile]) -> str:
    """The one message for a caller's model spec outside the connection's policy: the
    same whether the path exists, is a file or is missing, so it maps nothing."""
    families = ", ".join(sorted(p for p in profiles if profiles[p].default_model))
    return (
        f"{spec!r} is not an allowed model: name a model family ({families}), a hub id "
        "(org/name) or a folder under the connection's models_dir (local paths elsewhere "
        "need allow_model_paths on the connection)"
    )


def check_spec(spec: str, profiles: Mapping[str, ModelProfile], config_dir: str | None) -> None:
    """Refuse a caller's spec that is neither a family name, a hub id nor a plain
    relative name (looked up under ``models_dir`` only).  String rules only: the
    file system is not consulted, so the answer tells nothing about the host."""
    if spec in ("", "embedded", EMBEDDED_MODEL_NAME) or spec in profiles:
        return
    parts = spec.replace("\\", "/").split("/")
    relative = all(part not in ("", ".", "..") for part in parts) and not spec.startswith("~")
    if relative and (_HUB_ID.fullmatch(spec) or config_dir):
        return
    raise ConnectionConfigError(not_allowed(spec, profiles), field="model")


def locate(
    spec: str,
    profiles: Mapping[str, ModelProfile],
    *,
    models_dir: str | None = None,
    offline: bool = True,
    token: str | None = None,
    local_paths: bool = True,
) -> Path:
    """The local folder for a model spec (preset name, path or hub id).

    ``local_paths=False`` (a caller's spec, not the connection's): no folder outside
    ``models_dir`` is looked at, and a name found nowhere is :func:`not_allowed`.
    """
    if spec in ("", "embedded", EMBEDDED_MODEL_NAME):
        return embedded_model_path()
    profile = profiles.get(spec)
    if profile is not None and profile.default_model and profile.default_model != spec:
        return locate(
            profile.default_model, profiles, models_dir=models_dir, offline=offline, token=token
        )
    if models_dir:
        # Lexically inside (check_spec refused "..", "~" and absolute specs for callers);
        # links the admin put into models_dir are followed on purpose.
        root = Path(models_dir).expanduser()
        candidate = root / spec
        inside = Path(os.path.normpath(candidate)).is_relative_to(os.path.normpath(root))
        if (inside or local_paths) and (candidate / "model_index.json").is_file():
            return candidate
    if not local_paths:
        if _HUB_ID.fullmatch(spec):
            return _hub_snapshot(spec, offline=offline, token=token)
        raise ConnectionConfigError(not_allowed(spec, profiles), field="model")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConnectionConfigError(
                f"model folder {str(path)!r} has no model_index.json (not a diffusers pipeline)",
                field="model",
            )
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _hub_snapshot(spec, offline=offline, token=token)
    raise ConnectionConfigError(
        f"model {spec!r} is neither a local folder nor a hub id", field="model"
    )


def read_class_name(folder: Path) -> str:
    try:
        data = json.loads((folder / "model_index.json").read_text())
        return str(data["_class_name"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConnectionConfigError(
            f"cannot read _class_name from {folder / 'model_index.json'}: {exc}", field="model"
        ) from None


def auto_profile(class_name: str) -> ModelProfile | None:
    """A generic profile for a class diffusers' AutoPipeline can route."""
    from diffusers.pipelines import auto_pipeline as ap

    pipes: dict[str, str] = {}
    for task, mapping in (
        (TEXT_TO_IMAGE, ap.AUTO_TEXT2IMAGE_PIPELINES_MAPPING),
        (IMAGE_TO_IMAGE, ap.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING),
    ):
        cls = ap._get_task_class(mapping, class_name, throw_error_if_not_exist=False)
        if cls is not None:
            pipes[task] = cls.__name__
    if not pipes:
        return None
    return ModelProfile(
        name=f"auto:{class_name}",
        title=f"{class_name} (routed by diffusers AutoPipeline)",
        pipelines=pipes,
        class_names=(class_name,),
        native_resolution=512,
        max_resolution=2048,
        size_multiple=16,
        supports=frozenset({"negative_prompt", "guidance"}),
        img2img_takes_size=class_name.startswith("Flux"),
        notes="No profile names this family; capabilities are generic defaults.",
    )


def pick_profile(
    spec: str,
    folder: Path,
    class_name: str,
    profiles: Mapping[str, ModelProfile],
    forced: str | None = None,
) -> ModelProfile:
    if forced:
        if forced not in profiles:
            raise ConnectionConfigError(
                f"profile {forced!r} is not registered; known: {', '.join(sorted(profiles))}",
                field="profile",
            )
        return profiles[forced]
    ordered = sorted(profiles.values(), key=lambda p: -p.priority)
    if folder.resolve() == embedded_model_path().resolve() and "embedded" in profiles:
        return profiles["embedded"]
    for profile in ordered:
        if profile.matches_id(spec) or profile.matches_id(str(folder)):
            return profile
    for profile in ordered:
        if class_name in profile.class_names:
            return profile
    generic = auto_profile(class_name)
    if generic is not None:
        return generic
    raise ConnectionConfigError(
        f"model {spec!r} has pipeline class {class_name!r}, which no registered model profile "
        f"and no diffusers AutoPipeline task can route; known families: "
        f"{', '.join(sorted(profiles))}",
        field="model",
        details={"class_name": class_name},
    )


def route(
    spec: str,
    profiles: Mapping[str, ModelProfile],
    *,
    models_dir: str | None = None,
    offline: bool = True,
    token: str | None = None,
    forced_profile: str | None = None,
    local_paths: bool = True,
) -> ResolvedModel:
    folder = locate(
        spec,
        profiles,
        models_dir=models_dir,
        offline=offline,
        token=token,
        local_paths=local_paths,
    )
    class_name = read_class_name(folder)
    profile = pick_profile(spec, folder, class_name, profiles, forced_profile)
    return ResolvedModel(
        spec=spec or "embedded", source=str(folder), class_name=class_name, profile=profile
    )


# -- adaptation ------------------------------------------------------------------------
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


def adapt(
    job: ImageJob, profile: ModelProfile, *, device: str = "cpu", size_policy: str = "upscale"
) -> Adapted:
    """Fit a node's job to a family: the effective request and one notice per change.

    Its integers are checked first (:func:`~imagenodes.engine.job.check_bounds`): a
    side past the family's bound, a count past the engine's or a seed past a
    generator's is a coded error naming the field, before anything loads."""
    check_bounds(job, max_side=max_side_of(profile))
    notices: list[Notice] = []
    task = job.task or (IMAGE_TO_IMAGE if job.sources else TEXT_TO_IMAGE)
    width, height, deliver = _fit_size(job, profile, notices, size_policy)
    count = _fit_count(job, profile, notices)
    init = None
    if job.sources:
        init = job.sources[0]
        if len(job.sources) > 1:
            init = blend(list(job.sources), (width, height))
            notices.append(
                Notice(
                    nc.IMAGES_BLENDED,
                    job.sources_field,
                    len(job.sources),
                    1,
                    "several sources are averaged into one init image",
                )
            )
    out = GenerationRequest(
        task=task,
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

    # Task: an image-to-image request on an instruction-edit family becomes an edit.
    if (
        out.task == IMAGE_TO_IMAGE
        and out.task not in profile.tasks
        and (INSTRUCT_EDIT in profile.tasks)
    ):
        notices.append(
            Notice(
                nc.TASK_ROUTED,
                "task",
                IMAGE_TO_IMAGE,
                INSTRUCT_EDIT,
                f"{profile.title} edits images by instruction",
            )
        )
        out.task = INSTRUCT_EDIT
        if out.strength is not None:
            notices.append(
                _ignored(
                    "strength",
                    out.strength,
                    profile,
                    "instruction edits use image_guidance_scale, not strength",
                )
            )
            out.strength = None
    if out.task not in profile.tasks:
        raise GenerationFailed(
            f"{profile.title} cannot do {out.task}; it supports {', '.join(sorted(profile.tasks))}",
            field="model",
        )

    # Optional parameters the family cannot use.
    if out.negative_prompt and "negative_prompt" not in profile.supports:
        notices.append(
            _ignored(
                "negative_prompt",
                out.negative_prompt,
                profile,
                "this family has no negative prompt",
            )
        )
        out.negative_prompt = None
    if out.prompt_2 is not None and "prompt_2" not in profile.supports:
        if "prompt_2" in out.explicit or out.prompt_2:
            notices.append(
                _ignored(
                    "prompt_2",
                    out.prompt_2,
                    profile,
                    "prompt_2 feeds a second text encoder this family lacks",
                )
            )
        out.prompt_2 = None
    if out.image_guidance_scale is not None and "image_guidance_scale" not in profile.supports:
        if "image_guidance_scale" in out.explicit:
            notices.append(
                _ignored(
                    "image_guidance_scale",
                    out.image_guidance_scale,
                    profile,
                    "only InstructPix2Pix models use image guidance",
                )
            )
        out.image_guidance_scale = None

    # Ranges.
    if out.steps is None:
        out.steps = profile.default_steps
    lo, hi = profile.steps_range
    if not lo <= out.steps <= hi:
        steps = int(_clamp(out.steps, lo, hi))
        notices.append(
            Notice(
                nc.STEPS_CLAMPED,
                "steps",
                out.steps,
                steps,
                f"{profile.title} works with {lo}–{hi} steps",
            )
        )
        out.steps = steps
    if out.guidance_scale is None:
        out.guidance_scale = profile.default_guidance
    glo, ghi = profile.guidance_range
    if not glo <= out.guidance_scale <= ghi:
        guidance = _clamp(out.guidance_scale, glo, ghi)
        notices.append(
            Notice(
                nc.GUIDANCE_CLAMPED,
                "guidance_scale",
                out.guidance_scale,
                guidance,
                f"{profile.title} uses guidance {glo}–{ghi}",
            )
        )
        out.guidance_scale = guidance

    # Image-to-image denoises int(steps × strength) steps: at least one, or the
    # pipeline fails on an empty schedule.
    if out.task == IMAGE_TO_IMAGE and out.strength is not None and out.steps:
        if int(out.steps * out.strength) < 1:
            raised = min(1.0, 1.0 / out.steps + 1e-6)
            notices.append(
                Notice(
                    nc.STRENGTH_RAISED,
                    "strength",
                    out.strength,
                    round(raised, 4),
                    f"strength × steps must be at least 1 denoising step ({out.strength} × "
                    f"{out.steps} < 1)",
                )
            )
            out.strength = raised

    # Precision.
    if out.precision:
        wanted = {"fp16": "float16", "bf16": "bfloat16"}.get(out.precision, out.precision)
        if device == "cpu" and wanted != "float32":
            notices.append(
                Notice(
                    nc.PRECISION_FALLBACK,
                    "precision",
                    out.precision,
                    "fp32",
                    "half precision is not used on CPU (slow and lossy there)",
                )
            )
            out.precision = "fp32"
        elif wanted not in profile.dtypes:
            notices.append(
                Notice(
                    nc.PRECISION_FALLBACK,
                    "precision",
                    out.precision,
                    profile.dtypes[0],
                    f"{profile.title} runs in {profile.dtypes}",
                )
            )
            out.precision = profile.dtypes[0]

    return Adapted(out, notices, deliver)
