"""Discovery and isolation: entry points, duplicates, broken packs, the block-list."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagenodes import Host, Node, NodeInput, NodeOutput, PluginError, hookimpl
from imagenodes.registry.plugins import DISABLE_ENV


def make_dist(
    root: Path, dist: str, entry_points: dict[str, str], module: str | None = None, source: str = ""
) -> None:
    """A real installed distribution: a dist-info folder on sys.path, as pip writes it."""
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[imagenodes]\n{lines}\n")
    if module:
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    for name in [m for m in sys.modules if m.startswith("pack_")]:
        del sys.modules[name]


def test_example_pack_is_discovered_through_its_entry_point_and_runs(tmp_path: Path) -> None:
    eps = importlib.metadata.entry_points(group="imagenodes")
    assert any(ep.name == "checkerboard" for ep in eps), (
        "install examples/imagenodes-example-pack (CI does) to run this test"
    )
    host = Host(tmp_path / "ws")
    entry = next(e for e in host.catalog() if e["id"] == "checkerboard")
    assert entry["provider"] == "checkerboard"
    pack = next(p for p in host.plugin_packs() if p["name"] == "checkerboard")
    assert pack["distribution"] == "imagenodes-example-pack"
    result = host.run("checkerboard", {"size": 32, "squares": 4})
    ref = result.outputs["image"]
    with Image.open(
        host.workspace.fs.open(host.workspace.relpath(ref) and ref.removeprefix("file://"), "rb")
    ) as im:
        assert im.size == (32, 32)
        assert im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((8, 0)) == (255, 255, 255)


def test_builtins_come_from_entry_points_like_any_pack(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws")
    packs = {p["name"]: p for p in host.plugin_packs()}
    for name in ("core", "generate_image_v2", "image_to_image", "image_generation"):
        assert packs[name]["distribution"] == "imagenodes"
        assert packs[name]["status"] == "available"
    assert Host(tmp_path / "ws2", load_entrypoints=False).catalog() == []


def test_pack_that_fails_to_import_is_isolated(site: Path, tmp_path: Path) -> None:
    make_dist(
        site,
        "pack-broken",
        {"broken": "pack_broken"},
        "pack_broken",
        "raise RuntimeError('boom at import')\n",
    )
    host = Host(tmp_path / "ws")
    pack = next(p for p in host.plugin_packs() if p["name"] == "broken")
    assert pack["status"] == "unavailable"
    assert "boom at import" in pack["reason"]
    assert "generate_image_v2" in {e["id"] for e in host.catalog()}
    with pytest.raises(PluginError, match="boom at import"):
        Host(tmp_path / "ws", strict=True)


def test_misspelled_hook_is_caught_by_check_pending(site: Path, tmp_path: Path) -> None:
    make_dist(
        site,
        "pack-typo",
        {"typo": "pack_typo"},
        "pack_typo",
        "from imagenodes import hookimpl\n\n@hookimpl\ndef register_node(register):\n    pass\n",
    )
    host = Host(tmp_path / "ws")
    pack = next(p for p in host.plugin_packs() if p["name"] == "typo")
    assert pack["status"] == "unavailable"
    assert "register_node" in pack["reason"]


class _Dup(Node):
    id = "generate_image_v2"
    title = "Impostor"
    description = "Claims a built-in id."

    class Input(NodeInput):
        """x"""

    class Output(NodeOutput):
        """x"""

    def run(self, inputs, ctx):
        return {}


class DupPack:
    @hookimpl
    def register_nodes(self, register):
        register(_Dup)


def test_duplicate_node_id_is_refused_naming_both_providers(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws", plugins=[DupPack()])
    pack = next(p for p in host.plugin_packs() if p["name"].startswith("DupPack"))
    assert pack["status"] == "unavailable"
    assert "generate_image_v2" in pack["reason"]
    assert "'generate_image_v2'" in pack["reason"] and "DupPack" in pack["reason"]
    assert host.registered.node_providers["generate_image_v2"] == "generate_image_v2"
    assert host.node("generate_image_v2").title == "Generate Image V2"
    with pytest.raises(PluginError, match="provided by pack 'generate_image_v2' and by pack"):
        Host(tmp_path / "ws", plugins=[DupPack()], strict=True)


class RaisingPack:
    @hookimpl
    def register_nodes(self, register):
        raise ValueError("cannot register today")


def test_pack_raising_while_registering_is_isolated(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws", plugins=[RaisingPack()])
    pack = next(p for p in host.plugin_packs() if p["name"].startswith("RaisingPack"))
    assert pack["status"] == "unavailable" and "cannot register today" in pack["reason"]
    assert len(host.catalog()) >= 3


class BadContract(Node):
    id = "Bad Id"
    version = "one"
    title = "Bad"
    description = "Breaks the contract."

    class Input(NodeInput):
        """x"""

    class Output(NodeOutput):
        """x"""


def test_node_contract_is_checked_at_registration(tmp_path: Path) -> None:
    class Pack:
        @hookimpl
        def register_nodes(self, register):
            register(BadContract)

    host = Host(tmp_path / "ws", plugins=[Pack()])
    reason = next(p for p in host.plugin_packs() if p["name"].startswith("Pack"))["reason"]
    assert "semver" in reason and "id 'Bad Id'" in reason and "run(inputs, ctx)" in reason


def test_disable_env_blocks_named_packs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DISABLE_ENV, "image_to_image, checkerboard")
    host = Host(tmp_path / "ws")
    ids = {e["id"] for e in host.catalog()}
    assert "image_to_image" not in ids and "checkerboard" not in ids
    assert "generate_image_v2" in ids
    status = {p["name"]: p["status"] for p in host.plugin_packs()}
    assert status["image_to_image"] == "disabled"


def test_pytest_fixtures_for_plugin_authors(imagenodes_host) -> None:
    """The pytest11 plugin gives pack authors a host that discovered installed packs."""
    ids = {entry["id"] for entry in imagenodes_host.catalog()}
    assert {"generate_image_v2", "checkerboard"} <= ids
    result = imagenodes_host.run("checkerboard", {"size": 16, "squares": 2})
    assert imagenodes_host.workspace.exists(result.outputs["image"])
