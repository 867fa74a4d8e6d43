"""The docs cannot fall behind the code: every registered node, hook, error code and
connection field must be documented, and ``docs/nodes.md`` must be what
``tools/gen_docs.py`` generates today."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from imagenodes import Host
from imagenodes.connections.store import DEFAULT_NAME, ENV_FILE, ENV_PREFIX
from imagenodes.errors import SOLUTIONS, USER_ERROR_CODES
from imagenodes.registry import hookspecs

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    return load_gen_docs()


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host]) -> Host:
    """A fresh host with the installed packs (the root conftest keeps the caller's
    connections out)."""
    return make_host()


def read(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    return path.read_text(encoding="utf-8")


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cells and cells[0] == first_cell:
                return cells
    raise AssertionError(f"no table row starting with {first_cell}")


# -- nodes.md ----------------------------------------------------------------------------
def test_every_registered_node_has_a_section(host: Host) -> None:
    text = read("nodes.md")
    for entry in host.catalog():
        assert f"\n## `{entry['id']}`\n" in text, f"node {entry['id']} missing from docs/nodes.md"


def test_nodes_md_is_what_the_generator_writes(host: Host, gen_docs: ModuleType) -> None:
    expected = gen_docs.render(host)
    assert read("nodes.md") == expected, (
        "docs/nodes.md is stale; regenerate with: .venv/bin/python tools/gen_docs.py"
    )


def test_nodes_md_documents_fields_ranges_and_codes(host: Host) -> None:
    text = read("nodes.md")
    section = text.split("\n## `image_to_image`\n", 1)[1].split("\n## `", 1)[0]
    steps = table_row(section, "`steps`")
    assert steps[1:5] == ["integer", "no", "`20`", "> 0 and ≤ 50"]
    row = table_row(section, "`INVALID_GUIDANCE_SCALE`")
    assert "`guidance_scale`, `image_guidance_scale`" in row[1]
    assert row[2] == host.node("image_to_image").solutions["INVALID_GUIDANCE_SCALE"]
    assert "PixelML Connection" in section and "`pixelml`" in section
    v2 = text.split("\n## `generate_image_v2`\n", 1)[1].split("\n## `", 1)[0]
    assert "`16:9_FHD`" in table_row(v2, "`aspect_ratio`")[4]


def test_check_flag_fails_on_stale_docs(gen_docs: ModuleType, tmp_path: Path, capsys) -> None:
    current = tmp_path / "nodes.md"
    current.write_text(read("nodes.md"), encoding="utf-8")
    assert gen_docs.main(["--check", "--output", str(current)]) == 0
    stale = read("nodes.md").replace("\n## `generate_image_v2`\n", "\n## `generate_image_v1`\n")
    current.write_text(stale, encoding="utf-8")
    assert gen_docs.main(["--check", "--output", str(current)]) == 1
    assert "stale" in capsys.readouterr().err
    assert current.read_text(encoding="utf-8") == stale  # --check writes nothing


def test_generator_picks_up_a_newly_registered_node(gen_docs: ModuleType, tmp_path: Path) -> None:
    """A pack installed after the docs were generated makes them stale."""
    from imagenodes import Node, NodeInput, NodeOutput, hookimpl

    class NewInput(NodeInput):
        """New input."""

    class NewOutput(NodeOutput):
        """New output."""

    class New(Node):
        id = "brand_new_node"
        title = "Brand new"
        description = "Registered after the docs were written."
        Input = NewInput
        Output = NewOutput

        def run(self, inputs: Any, ctx: Any) -> NewOutput:
            return NewOutput()

    class Pack:
        @hookimpl
        def register_nodes(self, register: Any) -> None:
            register(New)

    rendered = gen_docs.render(Host(tmp_path / "ws", plugins=[Pack()]))
    assert "\n## `brand_new_node`\n" in rendered
    assert rendered != read("nodes.md")


# -- hooks.md ----------------------------------------------------------------------------
def hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    ]


def test_every_hookspec_is_documented_with_its_signature() -> None:
    names = hookspec_names()
    assert names == [
        "register_nodes",
        "register_connection_types",
        "register_model_profiles",
        "register_commands",
    ]
    text = read("hooks.md")
    for name in names:
        assert f"\n## `{name}`\n" in text, f"hook {name} missing from docs/hooks.md"
        # hookspecs uses postponed annotations, so these are the source strings.
        sig = inspect.signature(getattr(hookspecs, name))
        params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
        signature = f"def {name}({params}) -> {sig.return_annotation}"
        assert signature in text, f"docs/hooks.md lacks the signature {signature}"
    for topic in ("IMAGENODES_DISABLE_PLUGINS", "entry-points.imagenodes", "strict=True"):
        assert topic in text
    assert "## Writing a pack" in text
    assert "### Isolation semantics" in text and "### Duplicate ids" in text


def hooks_md_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", read("hooks.md"), flags=re.S)
    return [b for b in blocks if "@hookimpl" in b]


@pytest.mark.slow  # the generating example runs on the embedded model
def test_hook_examples_in_hooks_md_register_and_run(tmp_path: Path) -> None:
    """The examples are real code: each registers through a Host like a pack."""
    examples = hooks_md_examples()
    # One example per hook, plus the generating node of register_nodes.
    assert len(examples) == len(hookspec_names()) + 1
    plugins = []
    for index, source in enumerate(examples):
        module = types.ModuleType(f"hooks_md_example_{index}")
        sys.modules[module.__name__] = module  # pydantic resolves annotations through it
        try:
            exec(compile(source, f"docs/hooks.md example {index}", "exec"), module.__dict__)
        finally:
            del sys.modules[module.__name__]
        plugins.append(module)
    toml = re.search(r"Configured like any connection.*?```toml\n(.*?)```", read("hooks.md"), re.S)
    assert toml is not None
    conn_file = tmp_path / "farm.toml"
    conn_file.write_text(toml.group(1))

    host = Host(tmp_path / "ws", plugins=plugins, connections_file=conn_file)
    for module in plugins:
        pack = host.registered.plugin_packs[module.__name__]
        assert pack.status == "available", pack.reason
    assert "remote_renderer" in host.registered.connection_types
    assert "tiny-sd" in host.registered.profiles
    assert host.connections.public()["farm"]["api_key"] == "**********"
    result = host.run("solid_colour", {"size": 16})
    assert result.outputs["image"].endswith(".png")
    poster = host.run("poster", {"prompt": "a red circle on a blue background"})
    # 16:9 at the native long side is 64x40, drawn at the embedded model's 88x48 bucket.
    assert len(poster.outputs["images"]) == 1
    assert poster.effective[0]["size"]["generated"] == "88x48"
    assert poster.effective[0]["size"]["delivered"] == "64x40"
    assert [n["code"] for n in poster.notices] == ["SIZE_RESAMPLED"]


# -- errors.md ---------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(SOLUTIONS))
def test_every_error_code_is_documented(code: str) -> None:
    row = table_row(read("errors.md"), f"`{code}`")
    assert len(row) == 5, row
    assert row[3] == SOLUTIONS[code], f"solution of {code} differs in docs/errors.md"
    assert row[4] == ("2" if code in USER_ERROR_CODES else "1"), f"exit code of {code}"


def test_per_node_solutions_are_documented(host: Host) -> None:
    text = read("errors.md")
    for node_id in host.nodes:
        for code, solution in host.node(node_id).solutions.items():
            assert f"| `{code}` | {solution} |" in text, (node_id, code)


# -- connections.md ----------------------------------------------------------------------
def _toml_literal(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def test_every_connection_type_and_field_is_documented(host: Host) -> None:
    text = read("connections.md")
    assert host.registered.connection_types, "no connection types registered"
    for type_name, cls in host.registered.connection_types.items():
        assert f"`{type_name}`" in text
        for name, info in cls.model_fields.items():
            row = table_row(text, f"`{name}`")
            if info.default_factory is not None:
                continue  # documented in words (e.g. "the embedded model")
            assert info.default is not PydanticUndefined
            want = "unset" if info.default is None else _toml_literal(info.default)
            assert row[2] == want, f"default of {type_name}.{name}: {row[2]!r} != {want!r}"
            if name in cls.secret_fields():
                assert "secret" in row[1]
    assert "the embedded model" in table_row(text, "`model`")[2]


def test_connection_sources_are_documented() -> None:
    text = read("connections.md")
    assert f"{ENV_PREFIX}<NAME>_<FIELD>" in text
    assert f"`{ENV_FILE}`" in text
    assert 'platformdirs.user_config_dir("imagenodes")' in text and "connections.toml" in text
    assert f"`{DEFAULT_NAME}`" in text
    assert "## Secrets" in text and "SecretStr" in text


def test_toml_example_in_connections_md_is_valid(tmp_path: Path) -> None:
    block = re.search(r"```toml\n(# connections\.toml.*?)```", read("connections.md"), re.S)
    assert block is not None
    path = tmp_path / "connections.toml"
    path.write_text(block.group(1))
    store = Host(tmp_path / "ws", connections_file=path).connections
    for name in store.names():
        store.get(name)  # validates; raises CONNECTION_ERROR when the example is wrong
    assert store.get("gpu").hub_token is not None


# -- links -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nodes.md", "hooks.md", "connections.md", "errors.md"])
def test_relative_links_resolve(name: str) -> None:
    text = read(name)
    links = re.findall(r"\]\(([^)#:]*?)(?:#([^)]*))?\)", text)
    for target, anchor in links:
        if not target and not anchor:
            continue
        path = DOCS / (target or name)
        assert path.is_file(), f"{name} links to missing {target}"
        if anchor:
            assert anchor in anchors(path.read_text(encoding="utf-8")), f"{name}: #{anchor}"


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower-cased, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


# -- performance.md ----------------------------------------------------------------------
def test_performance_md_reports_every_benchmark_with_its_command_and_output() -> None:
    """Each script under bench/ has its command, its printed table and SUMMARY line."""
    text = read("performance.md")
    assert "<!--" not in text and "Status:" not in text  # no unfilled placeholders
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))
    assert scripts == [
        "batching",
        "cold_start",
        "memory",
        "peer_comfyui",
        "scale",
        "scale_out",
        "service_batching",
        "service_path",
        "size_policy",
        "task_switch",
        "threads",
        "warm_overhead",
    ]
    for name in scripts:
        assert f"python bench/{name}.py" in text, name
    # one per script at least (peer_comfyui prints one per setting; threads --served one)
    assert text.count("SUMMARY: ") >= len(scripts)
    assert "PASS" in text and "machine" in text.lower()
