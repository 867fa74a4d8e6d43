"""pytest fixtures for plugin authors (loaded automatically through ``pytest11``).

A pack's own test suite gets a host that discovered every installed pack (so it sees
its node exactly as a builder would) over a throw-away workspace, and a factory of tiny
real diffusers models for nodes that generate::

    def test_my_node(imagenodes_host):
        result = imagenodes_host.run("my_node", {...})
        assert result.outputs["image"].startswith("file://")

pytest loads this module in every run of every project in an environment where
imagenodes is installed, so it imports nothing beyond pytest at import time: each
fixture imports what it needs when it is first used (torch and diffusers only for
``imagenodes_tiny_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imagenodes import Host


@pytest.fixture
def imagenodes_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A :class:`imagenodes.Host` with all installed packs, on a temporary workspace.

    The host does not see the caller's configuration: no ``IMAGENODES_*`` variable and
    an empty user config directory (so no ``connections.toml`` of the developer's).
    """
    from imagenodes import Host
    from imagenodes.testing import isolate_environment

    isolate_environment(monkeypatch, tmp_path / "imagenodes-config")
    return Host(tmp_path / "imagenodes-workspace")


@pytest.fixture(scope="session")
def imagenodes_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``imagenodes_tiny_model("sdxl")`` → folder of a tiny random-weight model (cached)."""
    root = tmp_path_factory.mktemp("imagenodes-tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from imagenodes.testing.tiny_models import build_tiny_model

            built[family] = build_tiny_model(family, root / f"tiny-{family}")
        return built[family]

    return get
