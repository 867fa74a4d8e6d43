"""Model resolution: which loadable model a spec names, and which family it belongs to.

Resolution order for a model spec: ``embedded`` / a profile preset name → that
profile's model; ``models_dir/<spec>`` → a local folder; an existing local folder; a
hub id (offline: only the local Hugging Face cache).  The family is then the forced
profile, else the highest-priority profile whose id pattern matches, else the profile
claiming ``model_index.json``'s ``_class_name``, else a generic profile when diffusers'
AutoPipeline knows the class.  Anything else is a CONNECTION_ERROR naming the class.

Kept apart from adaptation (:mod:`imagenodes.engine.routing`): this module reads the
file system and the hub cache and knows nothing of a request; adaptation reads only
the job and the profile this module picked.  ``Host.default_profile`` uses it without
importing torch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imagenodes.engine.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from imagenodes.engine.job import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, ModelInfo
from imagenodes.engine.profiles import ModelProfile
from imagenodes.errors import ConnectionConfigError


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
