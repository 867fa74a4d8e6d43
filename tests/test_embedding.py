"""imagenodes as a package other applications embed: dependency ranges with the tested
set in constraints.txt, extras that compose, a library that keeps stderr quiet, and
connection categories that belong to the nodes declaring them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from PIL import Image
from pydantic import Field

from imagenodes import (
    ConnectionRequirement,
    Host,
    ImageNodesError,
    Node,
    NodeInput,
    NodeOutput,
    RunContext,
    embedded_model_path,
    hookimpl,
)
from imagenodes.connections import Connection

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
#: Extras a user installs for a feature (everything but the composed ones).
FEATURE_EXTRAS = sorted(set(EXTRAS) - {"all", "dev"})


def constraints() -> dict[str, Version]:
    """constraints.txt as name → pinned version."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt pins exact versions only: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def requirements(*groups: str) -> list[Requirement]:
    """The requirements of the core (``""``) and the named extras, self-references out."""
    reqs = []
    for group in groups:
        for spec in PROJECT["dependencies"] if group == "" else EXTRAS[group]:
            req = Requirement(spec)
            if canonicalize_name(req.name) != "imagenodes":
                reqs.append(req)
    return reqs


# -- ranges and the tested set ------------------------------------------------------------
def test_runtime_dependencies_are_ranges_with_a_ceiling() -> None:
    """No exact pin (an application keeps its own torch); every range that is not a
    calendar version stops below a major release."""
    for req in requirements("", *FEATURE_EXTRAS):
        ops = {spec.operator for spec in req.specifier}
        assert "==" not in ops and "===" not in ops, f"{req} is pinned: use a range"
        assert ">=" in ops, f"{req} has no tested lower bound"
        calendar = any(int(spec.version.split(".")[0]) >= 2000 for spec in req.specifier)
        assert calendar or "<" in ops, f"{req} has no upper bound"
    torch = next(r for r in requirements("") if r.name == "torch")
    assert Version("2.13.0+cpu") in torch.specifier and Version("2.14.0+cu128") in torch.specifier


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    """constraints.txt is the tested set: every declared dependency (extras and dev tools
    too) has its pin there, and each pin lies inside the declared range."""
    pins = constraints()
    assert "imagenodes" not in pins and "imagenodes-example-pack" not in pins
    assert pins["torch"] == Version("2.13.0+cpu")  # the CPU wheel, as the README says
    for req in requirements("", *EXTRAS):
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is not in constraints.txt: install it, then refresh the file with "
            "`.venv/bin/pip freeze --exclude-editable`"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {req}"
        )


def test_install_commands_use_the_constraints_file() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv \.venv && (.*)$", readme, flags=re.M)
    assert len(commands) == 2
    assert all(".venv/bin/pip install -c constraints.txt -e " in c for c in commands)
    ci = (REPO / ".ci" / "run").read_text()
    assert '.venv/bin/pip install -q -c constraints.txt -e ".[dev]"' in ci


def test_extras_compose() -> None:
    """``all`` is every feature extra, ``dev`` is ``imagenodes[all]`` plus tools: no
    requirement is listed twice, so the lists cannot drift apart."""
    (everything,) = EXTRAS["all"]
    assert Requirement(everything).extras == set(FEATURE_EXTRAS)
    assert Requirement(everything).name == "imagenodes"
    assert EXTRAS["dev"][0] == "imagenodes[all]"
    runtime = {canonicalize_name(r.name) for r in requirements("", *FEATURE_EXTRAS)}
    tools = [canonicalize_name(r.name) for r in requirements("dev")]
    assert not runtime & set(tools), f"dev repeats {sorted(runtime & set(tools))}"
    assert len(tools) == len(set(tools))
    for extra in FEATURE_EXTRAS:
        names = [canonicalize_name(r.name) for r in requirements(extra)]
        assert len(names) == len(set(names)), extra


def _venv_with_torch(root: Path, version: str) -> Path:
    """A venv (no pip of its own) whose site-packages holds the dev environment's real
    torch, hard-linked; ``version`` other than the installed one rewrites only its
    metadata (an application's CUDA build of another release)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    spec = importlib.util.find_spec("torch")  # located, not imported
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).parent
    (info,) = source.parent.glob(f"torch-{importlib.metadata.version('torch')}.dist-info")
    (target,) = (root / "lib").glob("python3*/site-packages")
    shutil.copytree(source, target / "torch", copy_function=os.link)
    shutil.copytree(info, target / f"torch-{version}.dist-info")
    meta = target / f"torch-{version}.dist-info" / "METADATA"
    meta.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", meta.read_text()))
    return root / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("torch_version", ["2.13.0+cpu", "2.14.0+cu128"])
def test_installing_into_an_environment_with_torch_keeps_it(
    tmp_path: Path, torch_version: str
) -> None:
    """What a builder's backend does: ``pip install imagenodes`` where torch already is.
    The plan (``--dry-run --report``) installs imagenodes and what is missing, and
    leaves torch alone, the tested CPU build or another release's CUDA build."""
    python = _venv_with_torch(tmp_path / "venv", torch_version)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
         "--quiet", "--report", str(report), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "imagenodes" in planned and "diffusers" in planned
    assert "torch" not in planned, f"pip would replace torch {torch_version}: {planned}"
    assert not [name for name in planned if name.startswith("nvidia")]


# -- a quiet library ------------------------------------------------------------------------
QUIET_RUN = """
import logging, sys
if sys.argv[2] == "logging":
    logging.basicConfig(format="%(name)s: %(message)s")
from imagenodes import Host
host = Host(sys.argv[1])
result = host.run("generate_image_v2", {"prompt": "a red circle on a blue background",
                  "negative_prompt": "", "aspect_ratio": "1:1", "batch_size": 1, "seed": 1})
import imagenodes.mcp_server, imagenodes.server
print(result.outputs["images"][0])
"""


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # a user's default
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_host_run_in_a_fresh_process_writes_nothing_to_stderr(tmp_path: Path) -> None:
    """Host(), a real generation (the pipeline load is where transformers' torchvision
    advisories and the libraries' warnings come from), the service and MCP modules:
    stderr stays empty unless the application turns logging on, and then the
    advisories come as records of the libraries' own loggers."""
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_RUN, str(tmp_path / "ws"), "quiet"],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(".png")
    assert proc.stderr == ""
    if importlib.util.find_spec("torchvision") is None:  # transformers warns only then
        loud = subprocess.run(
            [sys.executable, "-c", QUIET_RUN, str(tmp_path / "ws2"), "logging"],
            capture_output=True,
            text=True,
            env=_child_env(),
            timeout=600,
        )
        assert loud.returncode == 0, loud.stderr
        assert re.search(r"(?m)^transformers[.\w]*: `CLIPImageProcessor` requires torchvision",
                         loud.stderr), loud.stderr  # fmt: skip


def test_library_warnings_become_records_of_the_librarys_module_logger(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The warnings hook: a warning raised in a library file is logged under that
    module's logger (here pluggy stands in for diffusers, to stay torch-free); any other
    warning goes to whatever showed warnings before."""
    import pluggy

    from imagenodes import logs

    monkeypatch.setattr(logs, "WARNING_LIBRARIES", ("pluggy",))
    shown: list[str] = []
    hook = logs._warnings_hook(lambda message, *rest: shown.append(str(message)))
    library_file = str(Path(pluggy.__file__).parent / "_hooks.py")
    with caplog.at_level("WARNING"):
        hook(FutureWarning("`torch_dtype` is deprecated"), FutureWarning, library_file, 23)
        hook(UserWarning("an application's own"), UserWarning, __file__, 1)
    (record,) = caplog.records
    assert record.name == "pluggy._hooks"
    assert record.getMessage() == "FutureWarning: `torch_dtype` is deprecated (_hooks.py:23)"
    assert shown == ["an application's own"]


# -- connection categories ------------------------------------------------------------------
def test_the_sdk_and_registry_name_no_nodes_category(tmp_path: Path) -> None:
    """The seed's category is the seed nodes' declaration, not an SDK default."""
    sources = [REPO / "src/imagenodes/sdk.py", *(REPO / "src/imagenodes/registry").glob("*.py")]
    offenders = [str(p.relative_to(REPO)) for p in sources if "pixelml" in p.read_text().lower()]
    assert offenders == []
    host = Host(tmp_path / "ws")
    for node_id in ("generate_image_v2", "image_to_image", "image_generation", "generate_image"):
        cls = host.node(node_id)
        assert cls.connections[0].name == "PixelML Connection"
        assert cls.connection_category() == "pixelml"


class StudioEngine(Connection):
    """An engine connection of a pack's own category."""

    type_name: ClassVar[str] = "studio_engine"
    category: ClassVar[str] = "studio"

    model: str = Field(default="embedded", description="Model spec.")

    def runtime_config(self) -> dict[str, Any] | None:
        return {"model": self.model}


STUDIO = ConnectionRequirement(
    name="Studio Connection", description="The studio's engine.", category="studio"
)


class WhichInput(NodeInput):
    """Which connection input."""

    generate: bool = Field(default=False, description="Look the model up through ctx.models.")


class WhichOutput(NodeOutput):
    """Which connection output."""

    type: str = Field(description="The connection's type.")
    category: str = Field(description="The connection's category.")
    model: str | None = Field(default=None, description="ctx.models.lookup()'s model.")


class _Which(Node[WhichInput, WhichOutput]):
    title, description = "Which connection", "Reports the connection it gets."

    def run(self, inputs: WhichInput, ctx: RunContext) -> WhichOutput:
        conn = ctx.connection()
        model = ctx.models.lookup().source if inputs.generate else None
        ctx.images.save(Image.new("RGB", (1, 1)))  # so that run.json is written
        return WhichOutput(type=conn.type_name, category=conn.category, model=model)


class StudioNode(_Which):
    id = "studio_which"
    connections = (STUDIO,)


class PlainNode(_Which):
    id = "plain_which"


class StudioPack:
    @hookimpl
    def register_connection_types(self, register: Callable[[type], None]) -> None:
        register(StudioEngine)

    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(StudioNode)
        register(PlainNode)


def _studio_host(tmp_path: Path, model: str = "embedded") -> Host:
    return Host(
        tmp_path / "ws",
        plugins=[StudioPack()],
        connections={"studio": {"type": "studio_engine", "model": model}},
    )


def test_a_node_gets_the_category_it_declares(tmp_path: Path) -> None:
    """ctx.connection() without a category is the node's own (its first declared), and
    run.json records it; a node that declares none gets the host's default."""
    host = _studio_host(tmp_path)
    result = host.run("studio_which", {})
    assert result.outputs == {"type": "studio_engine", "category": "studio", "model": None}
    assert result.run_json is not None
    assert set(json.loads(host.workspace.read_bytes(result.run_json))["connections"]) == {"studio"}
    plain = host.run("plain_which", {})
    default = host.connections.get("default")
    assert plain.outputs == {"type": default.type_name, "category": default.category, "model": None}
    assert plain.run_json is not None
    record = json.loads(host.workspace.read_bytes(plain.run_json))
    assert set(record["connections"]) == {default.category}


@pytest.mark.slow
def test_ctx_models_generates_through_the_nodes_own_connection(tmp_path: Path) -> None:
    """ctx.models follows the node's category: the studio node's model spec is the
    studio connection's, not the default connection's."""
    host = _studio_host(tmp_path, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ImageNodesError) as err:
        host.run("studio_which", {"generate": True})
    assert err.value.code == "CONNECTION_ERROR" and "no-such-model" in err.value.message
    ok = _studio_host(tmp_path / "ok").run("studio_which", {"generate": True})
    assert ok.outputs["model"] == str(embedded_model_path())
