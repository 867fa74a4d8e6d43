"""pytest fixtures for plugin authors (loaded automatically through ``pytest11``).

A pack's own test suite gets a host that discovered every installed pack (so it sees
its node exactly as a builder would) over a throw-away workspace, and a factory of tiny
real diffusers models for nodes that generate::

    def test_my_node(imagenodes_host):
        result = imagenodes_host.run("my_node", {...})
        assert result.outputs["image"].startswith("file://")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def imagenodes_host(tmp_path: Path) -> object:
    """A :class:`imagenodes.Host` with all installed packs, on a temporary workspace."""
    from imagenodes import Host

    return Host(tmp_path / "imagenodes-workspace")


@pytest.fixture(scope="session")
def imagenodes_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``imagenodes_tiny_model("sdxl")`` → folder of a tiny random-weight model (cached)."""
    from imagenodes.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("imagenodes-tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / f"tiny-{family}")
        return built[family]

    return get
