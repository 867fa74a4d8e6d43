"""Model profiles: what each diffusers family can do, declared as data.

Routing and guardrails read these declarations instead of branching on model names,
so a plugin adds a family by registering a profile (``register_model_profiles``) and
every node adapts to it — with each adaptation reported as a notice.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from imagenodes.engine.job import IMAGE_TO_IMAGE, INSTRUCT_EDIT, TEXT_TO_IMAGE

#: Parameters a node may ask for that not every family uses.
OPTIONAL_PARAMETERS = ("negative_prompt", "prompt_2", "image_guidance_scale", "guidance")


@dataclass(frozen=True)
class ModelProfile:
    """Capabilities of one model family.

    ``pipelines`` maps a task to the diffusers pipeline class name that performs it;
    image-to-image pipelines are derived from the loaded base with ``from_pipe`` so
    they share every component.
    """

    name: str
    title: str
    pipelines: dict[str, str]
    #: ``model_index.json`` ``_class_name`` values routed to this family.
    class_names: tuple[str, ...] = ()
    #: fnmatch patterns on the model id/path (lower-cased) that pick this family
    #: before class-name routing (e.g. ``*turbo*``).
    id_patterns: tuple[str, ...] = ()
    native_resolution: int = 512
    max_resolution: int = 1024
    size_multiple: int = 8
    #: Pixels per image the family generates well (default native²).  A request
    #: much larger than this repeats its subject (SD 1.5 at 1024²), so under the
    #: default size policy it is generated at this budget and upscaled.
    pixel_budget: int | None = None
    #: The (width, height) sizes the family was trained on, if any (SDXL's buckets,
    #: the embedded model's): an aspect-ratio request is generated at the bucket of
    #: its shape and resized to the documented size.
    buckets: tuple[tuple[int, int], ...] = ()
    supports: frozenset[str] = frozenset({"negative_prompt", "guidance"})
    guidance_range: tuple[float, float] = (0.0, 15.0)
    steps_range: tuple[int, int] = (1, 50)
    max_images_per_call: int = 8
    default_steps: int = 20
    default_guidance: float = 7.5
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    #: The model a preset name resolves to (hub id or local path); "" = none.
    default_model: str = ""
    #: Routing priority among profiles that claim the same class name (higher wins).
    priority: int = 0
    #: Intra-op CPU threads for this family's pipeline calls; ``None`` = torch's
    #: default (one per core).  Small models set 1: their thousands of tiny ops per
    #: step gain nothing from a second core, and every parallel region then costs a
    #: thread hand-off that turns into seconds per image when the cores are shared.
    cpu_threads: int | None = None
    #: The family's image-to-image pipeline takes ``width``/``height`` (FLUX's does;
    #: SD's derives the size from the init image and rejects them).
    img2img_takes_size: bool = False
    notes: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        """Pixels per image it generates well (``pixel_budget``, default native²)."""
        return self.pixel_budget or self.native_resolution**2

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(self.pipelines)

    def matches_id(self, model: str) -> bool:
        low = model.lower()
        return any(fnmatch.fnmatch(low, pattern) for pattern in self.id_patterns)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "title": self.title,
            "tasks": sorted(self.tasks),
            "pipelines": dict(self.pipelines),
            "class_names": list(self.class_names),
            "native_resolution": self.native_resolution,
            "max_resolution": self.max_resolution,
            "pixel_budget": self.budget,
            "buckets": [f"{w}x{h}" for w, h in self.buckets],
            "size_multiple": self.size_multiple,
            "supports": sorted(self.supports),
            "guidance_range": list(self.guidance_range),
            "steps_range": list(self.steps_range),
            "max_images_per_call": self.max_images_per_call,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "dtypes": list(self.dtypes),
            "default_model": self.default_model,
            "cpu_threads": self.cpu_threads,
            "notes": self.notes,
        }


_SD_PIPES = {
    TEXT_TO_IMAGE: "StableDiffusionPipeline",
    IMAGE_TO_IMAGE: "StableDiffusionImg2ImgPipeline",
}
_SDXL_PIPES = {
    TEXT_TO_IMAGE: "StableDiffusionXLPipeline",
    IMAGE_TO_IMAGE: "StableDiffusionXLImg2ImgPipeline",
}

#: SDXL's and FLUX's common training buckets at ~1024² (1:1, 3:4, 4:3, 9:16, 16:9).
_XL_BUCKETS = ((1024, 1024), (896, 1152), (1152, 896), (768, 1344), (1344, 768))

EMBEDDED = ModelProfile(
    name="embedded",
    title="Embedded shapes model (64×64, offline)",
    pipelines=_SD_PIPES,
    id_patterns=("*embedded_model", "*embedded_model/", "imagenodes/embedded-shapes"),
    native_resolution=64,
    max_resolution=256,
    size_multiple=8,
    pixel_budget=64 * 64,
    # Its training buckets (tools/train_embedded_model.py): 1:1, 3:4, 4:3, 9:16, 16:9.
    buckets=((64, 64), (56, 72), (72, 56), (48, 88), (88, 48)),
    max_images_per_call=16,
    default_steps=20,
    default_guidance=7.5,
    default_model="embedded",
    priority=100,
    cpu_threads=1,
    notes="Trained on five aspect buckets of about 64×64 pixels; larger sizes are "
    "generated at the bucket of their shape and upscaled (size_policy).",
)

SD = ModelProfile(
    name="sd",
    title="Stable Diffusion 1.x / 2.x",
    pipelines=_SD_PIPES,
    class_names=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    native_resolution=512,
    max_resolution=1024,
    size_multiple=8,
    default_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    notes="SD 2.x 768-v models are the same family; set native size via the profile.",
)

SD_TURBO = ModelProfile(
    name="sd-turbo",
    title="SD-Turbo (adversarial distillation, 1–4 steps, no guidance)",
    pipelines=_SD_PIPES,
    id_patterns=("*sd-turbo*", "*sd_turbo*"),
    native_resolution=512,
    max_resolution=768,
    supports=frozenset(),
    guidance_range=(0.0, 0.0),
    steps_range=(1, 4),
    default_steps=1,
    default_guidance=0.0,
    default_model="stabilityai/sd-turbo",
    priority=10,
)

SDXL = ModelProfile(
    name="sdxl",
    title="Stable Diffusion XL",
    pipelines=_SDXL_PIPES,
    class_names=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    native_resolution=1024,
    max_resolution=2048,
    buckets=_XL_BUCKETS,
    supports=frozenset({"negative_prompt", "guidance", "prompt_2"}),
    max_images_per_call=4,
    default_steps=30,
    default_guidance=5.0,
    default_model="stabilityai/stable-diffusion-xl-base-1.0",
)

SDXL_TURBO = ModelProfile(
    name="sdxl-turbo",
    title="SDXL-Turbo (1–4 steps, no guidance)",
    pipelines=_SDXL_PIPES,
    id_patterns=("*sdxl-turbo*", "*sdxl_turbo*"),
    native_resolution=512,
    max_resolution=1024,
    supports=frozenset({"prompt_2"}),
    guidance_range=(0.0, 0.0),
    steps_range=(1, 4),
    max_images_per_call=4,
    default_steps=1,
    default_guidance=0.0,
    default_model="stabilityai/sdxl-turbo",
    priority=10,
)

INSTRUCT_PIX2PIX = ModelProfile(
    name="instruct-pix2pix",
    title="InstructPix2Pix (edit an image by instruction)",
    pipelines={INSTRUCT_EDIT: "StableDiffusionInstructPix2PixPipeline"},
    class_names=("StableDiffusionInstructPix2PixPipeline",),
    native_resolution=512,
    max_resolution=1024,
    supports=frozenset({"negative_prompt", "guidance", "image_guidance_scale"}),
    default_steps=20,
    default_guidance=7.5,
    default_model="timbrooks/instruct-pix2pix",
)

FLUX = ModelProfile(
    name="flux",
    title="FLUX.1 (flow matching transformer)",
    pipelines={TEXT_TO_IMAGE: "FluxPipeline", IMAGE_TO_IMAGE: "FluxImg2ImgPipeline"},
    class_names=("FluxPipeline", "FluxImg2ImgPipeline"),
    native_resolution=1024,
    max_resolution=2048,
    size_multiple=16,
    buckets=_XL_BUCKETS,
    supports=frozenset({"guidance", "prompt_2"}),
    guidance_range=(0.0, 10.0),
    steps_range=(1, 50),
    max_images_per_call=4,
    default_steps=4,
    default_guidance=3.5,
    dtypes=("bfloat16", "float32", "float16"),
    default_model="black-forest-labs/FLUX.1-schnell",
    img2img_takes_size=True,
    notes="No negative prompt; sizes are multiples of 16 (VAE factor 8 × 2×2 patches).",
)

BUILTIN_PROFILES: tuple[ModelProfile, ...] = (
    EMBEDDED,
    SD,
    SD_TURBO,
    SDXL,
    SDXL_TURBO,
    INSTRUCT_PIX2PIX,
    FLUX,
)
