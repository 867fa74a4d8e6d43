"""The local diffusers runtime: what a ``pixelml``-category connection means here.

The seeds' nodes call a hosted "PixelML" API; in imagenodes the same connection slot
configures the in-process diffusers engine that fulfils them.  The default instance
points at the embedded model, so the main job needs zero configuration.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from imagenodes.connections.base import Connection


def _default_model() -> str:
    # The connection only names the folder; the engine (which it must not import) loads it.
    from imagenodes.assets import embedded_model_path

    return str(embedded_model_path())


class LocalDiffusersConnection(Connection):
    """Runs diffusers pipelines in this process."""

    type_name: ClassVar[str] = "local_diffusers"
    category: ClassVar[str] = "pixelml"

    model: str = Field(
        default_factory=_default_model,
        description="Hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or local "
        "folder of a diffusers model; defaults to the embedded model.",
    )
    profile: str | None = Field(
        default=None,
        description="Force a model profile (family) instead of routing by model_index.json.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", description="auto = cuda, then mps, then cpu."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto = float16 on cuda, float32 elsewhere."
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="CPU threads per pipeline call; default = the model profile's choice "
        "(1 for the embedded model), else one per core.",
    )
    models_dir: str | None = Field(
        default=None,
        description="Folder searched for hub ids first (models_dir/<org>/<name>), so hub "
        "ids resolve to local copies.",
    )
    offline: bool = Field(
        default=True, description="Never contact a model hub; only local files are used."
    )
    size_policy: Literal["upscale", "cap", "native"] = Field(
        default="upscale",
        description="upscale: generate at the model's own size for the shape and resize to "
        "the requested size; cap: scale requests above the model's maximum down and deliver "
        "that; native: deliver the model's own size for the shape.",
    )
    upscale: Literal["lanczos", "hires"] = Field(
        default="lanczos",
        description="How upscaled images are finished: lanczos (resize only) or hires (then a "
        "low-strength image-to-image pass at the delivered size, the hires fix; slower).",
    )
    allow_model_paths: bool = Field(
        default=False,
        description="Let node inputs (image_generator's baseModel) name any local folder. "
        "Off: only model family names, hub ids and folders under models_dir.",
    )
    hub_token: SecretStr | None = Field(
        default=None, description="Token for private hub models (used only when offline=false)."
    )

    def runtime_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "profile": self.profile,
            "device": self.device,
            "dtype": self.dtype,
            "cpu_threads": self.cpu_threads,
            "models_dir": self.models_dir,
            "offline": self.offline,
            "allow_model_paths": self.allow_model_paths,
            "size_policy": self.size_policy,
            "upscale": self.upscale,
            "token": self.hub_token.get_secret_value() if self.hub_token else None,
        }
