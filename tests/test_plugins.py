"""Discovery and isolation: entry points, duplicates, broken packs, the block-list."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest
from PIL import Image

from imagenodes import Host, Node, NodeInput, NodeOutput, PluginError, hookimpl
from imagenodes.registry.plugins import (
    COMMANDS_GROUP,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    PluginLoader,
    new_plugin_manager,
)
from tests.helpers import BUILTIN_PACKS, EXAMPLE_PACK, INSTALLED_PACKS, NODE_IDS, PACK_NODES


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
    assert EXAMPLE_PACK in eps.names, (
        "install examples/imagenodes-example-pack (CI does) to run this test"
    )
    assert set(eps.names) == INSTALLED_PACKS  # nothing else installed in the dev env
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
    assert set(packs) == INSTALLED_PACKS
    for name in BUILTIN_PACKS:
        assert packs[name]["distribution"] == "imagenodes"
        assert packs[name]["status"] == "available"
    assert {name: sorted(p["nodes"]) for name, p in packs.items()} == PACK_NODES
    assert {e["id"] for e in host.catalog()} == NODE_IDS
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
    assert {e["id"] for e in host.catalog()} == NODE_IDS  # the others all still load
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
    assert {e["id"] for e in host.catalog()} == NODE_IDS
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
    assert {e["id"] for e in host.catalog()} == NODE_IDS


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
    assert {e["id"] for e in host.catalog()} == NODE_IDS - {"image_to_image", "checkerboard"}
    status = {p["name"]: p["status"] for p in host.plugin_packs()}
    disabled = {"image_to_image", "checkerboard"}
    assert status == {name: "disabled" if name in disabled else "available" for name in PACK_NODES}


def test_pytest_fixtures_for_plugin_authors(imagenodes_host) -> None:
    """The pytest11 plugin gives pack authors a host that discovered installed packs."""
    assert {entry["id"] for entry in imagenodes_host.catalog()} == NODE_IDS
    result = imagenodes_host.run("checkerboard", {"size": 16, "squares": 2})
    assert imagenodes_host.workspace.exists(result.outputs["image"])


HEAVY = ("torch", "diffusers", "transformers")


def test_importing_the_pytest_plugin_imports_no_model_library() -> None:
    """pytest loads the plugin in every run of every project: it must stay cheap."""
    script = textwrap.dedent(
        f"""
        import json, sys
        import imagenodes.testing.pytest_plugin
        import imagenodes.testing
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def run_pytest_in(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``folder`` alone (its own ini file; entry-point plugins load as usual)."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=300,
    )


AUTHOR_CONFTEST = """
import json, sys

def pytest_collection_finish(session):
    heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    with open("report.json", "w") as fh:
        json.dump({"plugin": session.config.pluginmanager.hasplugin("imagenodes"),
                   "heavy": heavy}, fh)
"""


def test_collecting_a_pack_test_suite_imports_no_model_library(tmp_path: Path) -> None:
    """A plugin author's suite, collected with the imagenodes plugin active (through its
    pytest11 entry point): torch is not imported just because imagenodes is installed."""
    (tmp_path / "conftest.py").write_text(AUTHOR_CONFTEST)
    (tmp_path / "test_pack.py").write_text(
        "def test_node(imagenodes_host, imagenodes_tiny_model):\n    pass\n"
    )
    proc = run_pytest_in(tmp_path, "--co")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_pack.py::test_node" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"plugin": True, "heavy": []}


def test_imagenodes_host_ignores_the_callers_configuration(tmp_path: Path) -> None:
    """The author fixture, in a suite run from a shell full of imagenodes settings."""
    config = tmp_path / "config"
    (config / "imagenodes").mkdir(parents=True)
    (config / "imagenodes" / "connections.toml").write_text(
        '[connections.default]\nmodel = "/from/user/config"\n'
    )
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_pack.py").write_text(
        textwrap.dedent(
            """
            import os, sys
            from imagenodes import embedded_model_path

            def test_isolated(imagenodes_host):
                assert not [k for k in os.environ if k.startswith("IMAGENODES_")]
                default = imagenodes_host.connections.get("default")  # not the user's
                assert default.model == str(embedded_model_path())
                assert default.device == "auto"
                ids = {e["id"] for e in imagenodes_host.catalog()}
                assert "checkerboard" in ids  # IMAGENODES_DISABLE_PLUGINS was dropped
                imagenodes_host.run("checkerboard", {"size": 16, "squares": 2})
                assert "torch" not in sys.modules
            """
        )
    )
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(config),
        "IMAGENODES_CONNECTION_DEFAULT_DEVICE": "tpu",
        "IMAGENODES_DISABLE_PLUGINS": "checkerboard",
    }
    proc = run_pytest_in(suite, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


# -- hooks through pluggy's machinery -------------------------------------------------------
REGISTRATION_HOOKS = ("register_nodes", "register_connection_types", "register_model_profiles")


def monitored() -> tuple[pluggy.PluginManager, list[tuple[str, list[str]]]]:
    """A plugin manager that records every hook call: (hook, implementing plugins)."""
    pm = new_plugin_manager()
    calls: list[tuple[str, list[str]]] = []
    pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: None,
    )
    return pm, calls


def test_hookcall_monitoring_sees_every_registration_hook_of_every_pack(tmp_path: Path) -> None:
    """Isolation is one call per pack, and each is a pluggy hook call: a monitor
    attached to the plugin manager sees them all, each with that pack's implementation."""
    pm, calls = monitored()
    host = Host(tmp_path / "ws", plugin_manager=pm)
    expected = []
    for hook in REGISTRATION_HOOKS:
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):  # pluggy's call order
            expected.append((hook, [impl.plugin_name]))
    assert calls == expected
    called = {name for _, (name,) in calls}
    assert called == INSTALLED_PACKS  # every pack implements at least one of them
    # Built-ins come first, in discovery order, as without markers.
    nodes_order = [name for hook, (name,) in calls if hook == "register_nodes"]
    assert nodes_order[-1] == EXAMPLE_PACK
    assert {e["id"] for e in host.catalog()} == NODE_IDS


def test_tracing_writes_each_pack_call(tmp_path: Path) -> None:
    pm = new_plugin_manager()
    lines: list[str] = []
    pm.trace.root.setwriter(lines.append)
    pm.enable_tracing()
    Host(tmp_path / "ws", plugin_manager=pm)
    traced = "".join(lines)
    assert traced.count("register_nodes") >= len(PACK_NODES) - 1  # core registers no node
    assert "finish register_model_profiles" in traced


class WrappedPack:
    """Wraps register_nodes and changes nothing: its wrapper still runs around each pack."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(wrapper=True)
    def register_nodes(self, register):
        self.calls += 1
        return (yield)


def test_a_wrapper_wraps_each_packs_call(tmp_path: Path) -> None:
    wrapper = WrappedPack()
    host = Host(tmp_path / "ws", plugins=[wrapper])
    node_packs = [name for name, nodes in PACK_NODES.items() if nodes]
    assert wrapper.calls == len(node_packs)  # once per pack that registers nodes
    assert {e["id"] for e in host.catalog()} == NODE_IDS
    (pack,) = [p for p in host.plugin_packs() if p["name"].startswith("WrappedPack")]
    assert pack["status"] == "available" and pack["nodes"] == []


def test_wrapper_in_the_callers_plugin_manager_sees_each_registration(tmp_path: Path) -> None:
    """An observer registered in the caller's manager before loading: not a pack, its
    wrapper wraps every pack's call and sees what each registers."""
    pm = new_plugin_manager()
    seen: list[tuple[str, list[str]]] = []

    class Observer:
        @hookimpl(wrapper=True)
        def register_nodes(self, register):
            seen.append(("call", []))
            return (yield)

    pm.register(Observer(), name="observer")
    host = Host(tmp_path / "ws", plugin_manager=pm)
    assert len(seen) == len([nodes for nodes in PACK_NODES.values() if nodes])
    assert "observer" not in {p["name"] for p in host.plugin_packs()}


def _order_pack(name: str, calls: list[str], **marker: bool) -> type:
    class Pack:
        @hookimpl(**marker)
        def register_nodes(self, register):
            calls.append(name)

    Pack.__name__ = name
    return Pack


def test_tryfirst_and_trylast_order_the_packs(tmp_path: Path) -> None:
    calls: list[str] = []
    first = _order_pack("FirstPack", calls, tryfirst=True)()
    last = _order_pack("LastPack", calls, trylast=True)()
    plain = _order_pack("PlainPack", calls)()
    pm, monitor = monitored()
    Host(tmp_path / "ws", plugins=[last, plain, first], plugin_manager=pm, load_entrypoints=False)
    assert calls == ["FirstPack", "PlainPack", "LastPack"]
    # Packs passed in are named by class and position.
    assert [names for hook, names in monitor if hook == "register_nodes"] == [
        ["FirstPack-2"],
        ["PlainPack-1"],
        ["LastPack-0"],
    ]


class _Claim(Node):
    id = "checkerboard"
    title = "Claims the example pack's id"
    description = "Registered first, through tryfirst."

    class Input(NodeInput):
        """x"""

    class Output(NodeOutput):
        """x"""

    def run(self, inputs, ctx):
        return {}


class TryfirstClaim:
    @hookimpl(tryfirst=True)
    def register_nodes(self, register):
        register(_Claim)


def test_tryfirst_decides_who_keeps_a_shared_id(tmp_path: Path) -> None:
    """The first provider in call order keeps an id: tryfirst moves a pack ahead, and the
    pack it overtook is the one refused, naming both."""
    host = Host(tmp_path / "ws", plugins=[TryfirstClaim()])
    assert host.node("checkerboard") is _Claim
    packs = {p["name"]: p for p in host.plugin_packs()}
    assert packs[EXAMPLE_PACK]["status"] == "unavailable"
    assert "TryfirstClaim" in packs[EXAMPLE_PACK]["reason"]


def test_a_raising_pack_is_isolated_and_the_monitor_sees_its_failed_call(tmp_path: Path) -> None:
    pm = new_plugin_manager()
    outcomes: list[tuple[str, bool]] = []
    pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: None,
        lambda outcome, name, impls, kwargs: outcomes.append(
            (impls[0].plugin_name, outcome.exception is None)
        ),
    )
    host = Host(tmp_path / "ws", plugins=[RaisingPack()], plugin_manager=pm)
    failed = [name for name, ok in outcomes if not ok]
    assert len(failed) == 1 and failed[0].startswith("RaisingPack")
    pack = host.registered.plugin_packs[failed[0]]
    assert pack.status == "unavailable" and "cannot register today" in pack.reason
    assert not pm.has_plugin(failed[0])  # unregistered: later hooks never call it
    assert {e["id"] for e in host.catalog()} == NODE_IDS


# -- commands ---------------------------------------------------------------------------------
def test_builtin_command_groups_register_through_the_hook() -> None:
    """flows, library, MCP and server are entry points of the commands group and add
    their sub-commands through register_commands, as a pack does."""
    pm, calls = monitored()
    loader = PluginLoader(
        groups=(ENTRY_POINT_GROUP, COMMANDS_GROUP), registrations=False, plugin_manager=pm
    )
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    loader.register_commands(sub)
    by_pack = [names[0] for hook, names in calls if hook == "register_commands"]
    assert {"flows", "library", "mcp", "server", EXAMPLE_PACK} <= set(by_pack)
    assert {"flow", "trainings", "packs", "sessions", "mcp", "serve", "worker"} <= set(sub.choices)
    assert "checkerboard" in sub.choices  # the example pack's command
    eps = importlib.metadata.entry_points(group=COMMANDS_GROUP)
    assert set(eps.names) == {"flows", "library", "mcp", "server"}
    cli_source = (Path(__file__).parents[1] / "src/imagenodes/cli.py").read_text()
    assert "__import__" not in cli_source  # no hard-coded module list left


class CommandPack:
    @hookimpl
    def register_commands(self, subparsers):
        subparsers.add_parser("hello", help="says hello")


class BrokenCommandPack:
    @hookimpl
    def register_commands(self, subparsers):
        subparsers.add_parser("nodes")  # taken by the core command


def test_a_pack_whose_commands_fail_loses_only_its_own(caplog: pytest.LogCaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sub.add_parser("nodes")
    loader = PluginLoader(
        load_entrypoints=False, plugins=[BrokenCommandPack(), CommandPack()], registrations=False
    )
    with caplog.at_level("WARNING", logger="imagenodes.registry.plugins"):
        loader.register_commands(sub)
    assert "hello" in sub.choices
    assert "BrokenCommandPack" in caplog.text and "conflicting subparser: nodes" in caplog.text
