"""Shared fixtures: tiny real models built once per session, and hosts over them.

Nothing here fakes generation: the tiny models are real diffusers pipelines with
random weights (built by :mod:`imagenodes.testing.tiny_models`), and the embedded
model is the shipped one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagenodes import Host, hookimpl
from imagenodes.engine.profiles import SD, ModelProfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SD_PROFILE = ModelProfile(
    name="tiny-sd",
    title="Tiny SD (tests)",
    pipelines=SD.pipelines,
    id_patterns=("*/tiny-sd", "*/tiny-sd-copy"),
    native_resolution=64,
    max_resolution=128,
    max_images_per_call=4,
    priority=50,
)


class TinyProfiles:
    """A test plugin: registers a 64-px profile for the tiny SD model, through the
    same hook a third-party family pack would use."""

    @hookimpl
    def register_model_profiles(self, register: Callable[[Any], None]) -> None:
        register(TINY_SD_PROFILE)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Lazily build each family once per session: ``tiny_models("sdxl")``."""
    from imagenodes.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            name = "tiny-sd" if family == "sd" else f"tiny-{family}"
            built[family] = build_tiny_model(family, root / name)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("sd")


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def tiny_host(tiny_sd: Path, workspace_dir: Path) -> Host:
    """A host over a local-folder workspace whose default model is the tiny SD."""
    return Host(
        workspace_dir, connections={"default": {"model": str(tiny_sd)}}, plugins=[TinyProfiles()]
    )


@pytest.fixture(scope="session")
def embedded_host_session(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """One host on the embedded model for the whole session (its pipeline stays warm)."""
    return Host(tmp_path_factory.mktemp("embedded-ws"))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
