"""The node SDK and the run path: the README's node, the typed context, ImageRef,
one notice per adaptation, run-path correctness (callbacks, staging, validation,
torch-free runs of nodes that generate nothing) and the host's result cache."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import Field

from imagenodes import (
    Aspect,
    Exact,
    Host,
    ImageJob,
    ImageNodesError,
    ImageRef,
    InputError,
    Node,
    NodeInput,
    NodeOutput,
    RunContext,
    hookimpl,
)
from imagenodes.engine.profiles import EMBEDDED
from imagenodes.engine.routing import adapt
from imagenodes.workspace import image_to_data_uri

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": 2}


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- the README's node ------------------------------------------------------------------
def readme_node_source() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(# my_pack/__init__\.py\n.*?)```", readme, re.S)
    assert match, "README has no '# my_pack/__init__.py' example"
    return match.group(1)


def test_readme_node_is_short_and_uses_only_the_package_root() -> None:
    source = readme_node_source()
    tree = ast.parse(source)
    ours = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imagenodes")
    ]
    assert [node.module for node in ours] == ["imagenodes"]  # no deep import
    concepts = {alias.name for node in ours for alias in node.names}
    assert len(concepts) <= 6, concepts
    code_lines = [line for line in source.splitlines() if line.strip() and not line.startswith("#")]
    assert len(code_lines) <= 20, len(code_lines)


def test_readme_node_runs_as_a_pack(tmp_path: Path) -> None:
    pack = tmp_path / "my_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(readme_node_source())
    spec = importlib.util.spec_from_file_location("my_pack", pack / "__init__.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    host = Host(tmp_path / "ws", plugins=[module])
    assert "invert" in host.nodes
    entry = next(e for e in host.catalog() if e["id"] == "invert")
    assert entry["input_schema"]["properties"]["image"]["type"] == "string"
    source = image_to_data_uri(Image.new("RGB", (8, 4), (10, 200, 30)))
    result = host.run("invert", {"image": source})
    data = host.workspace.read_bytes(result.outputs["image"])
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == (8, 4) and out.convert("RGB").getpixel((3, 2)) == (245, 55, 225)
    with pytest.raises(ImageNodesError) as info:
        host.run("invert", {"image": "../outside.png"})
    assert (info.value.code, info.value.field) == ("SOURCE_IMAGE_ERROR", "image")


# -- typed SDK ------------------------------------------------------------------------------
class ManyInput(NodeInput):
    images: list[ImageRef] = Field(description="Several images.")
    label: str = "x"


class ManyOutput(NodeOutput):
    sizes: list[list[int]]
    public: list[str]


class Many(Node[ManyInput, ManyOutput]):
    """A node of image-list inputs that also reports what its context exposes."""

    id, title, description = "many", "Many", "Sizes of several images."

    def run(self, inputs: ManyInput, ctx: RunContext) -> ManyOutput:
        sizes = [list(ctx.images.load(ref).size) for ref in inputs.images]
        public = sorted(name for name in dir(ctx) if not name.startswith("_"))
        return ManyOutput(sizes=sizes, public=public)


class ManyPack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register(Many)


def test_generic_node_gets_its_models_and_a_context_of_interfaces(tmp_path: Path) -> None:
    assert Many.Input is ManyInput and Many.Output is ManyOutput
    host = Host(tmp_path / "ws", plugins=[ManyPack()])
    a = image_to_data_uri(Image.new("RGB", (5, 3)))
    b = image_to_data_uri(Image.new("RGB", (2, 7)))
    out = host.run("many", {"images": [a, b]}).outputs
    assert out["sizes"] == [[5, 3], [2, 7]]
    interfaces = {"images", "models", "library", "util", "run_id", "node_id", "connection"}
    deprecated = {"load_image", "store_image", "check", "emit", "notice"}
    assert set(out["public"]) == interfaces | deprecated
    # No engine, cache, host, services or writable seed list is reachable from a node.
    assert not {"engine", "services", "seeds", "workspace", "token"} & set(out["public"])


def test_image_ref_errors_name_the_list_item(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws", plugins=[ManyPack()])
    good = image_to_data_uri(Image.new("RGB", (4, 4)))
    with pytest.raises(ImageNodesError) as info:
        host.run("many", {"images": [good, "data:image/png;base64,AAAA"]})
    assert (info.value.code, info.value.field) == ("SOURCE_IMAGE_ERROR", "images.1")
    assert files(tmp_path / "ws") == []


# -- one generation path: one notice per adaptation ----------------------------------------
@pytest.mark.parametrize(
    ("job", "code", "field"),
    [
        (ImageJob(prompt="p", size=Aspect.parse("9:16_HD")), "SIZE_UPSCALED", "aspect_ratio"),
        (ImageJob(prompt="p", size=Exact(100, 60)), "SIZE_ROUNDED", "width/height"),
        (
            ImageJob(prompt="p", count=40, count_policy="clamp", count_field="num_images"),
            "IMAGE_COUNT_CLAMPED",
            "num_images",
        ),
        (ImageJob(prompt="p", steps=80), "STEPS_CLAMPED", "steps"),
        (
            ImageJob(prompt="p", prompt_2="q", explicit=frozenset({"prompt_2"})),
            "PARAMETER_IGNORED",
            "prompt_2",
        ),
        (
            ImageJob(prompt="p", size=Aspect("7:5", fallback="1:1")),
            "ASPECT_RATIO_FALLBACK",
            "aspect_ratio",
        ),
    ],
)
def test_adapt_reports_each_adaptation_exactly_once(job: ImageJob, code: str, field: str) -> None:
    adapted = adapt(job, EMBEDDED)
    assert [(n.code, n.field) for n in adapted.notices] == [(code, field)]


def test_an_unknown_ratio_without_fallback_is_invalid_aspect_ratio() -> None:
    with pytest.raises(ImageNodesError) as info:
        adapt(ImageJob(prompt="p", size=Aspect("7:5")), EMBEDDED)
    assert (info.value.code, info.value.field) == ("INVALID_ASPECT_RATIO", "aspect_ratio")


@pytest.fixture(scope="module")
def tiny(tiny_sd: Path, make_host: Any) -> Host:
    return make_host(tiny_sd, tiny_profile=True)


@pytest.mark.parametrize(
    ("node", "inputs", "code"),
    [
        ("generate_image_v2", {"prompt": "p", "negative_prompt": ""}, "SIZE_UPSCALED"),
        ("image_generation", {"prompt": "p", "num_images": 9}, "IMAGE_COUNT_CLAMPED"),
        ("image_generation", {"prompt": "p", "image_size": "2K"}, "SIZE_UPSCALED"),
        ("image_generation", {"prompt": "p", "aspect_ratio": "2:1"}, "ASPECT_RATIO_FALLBACK"),
        ("generate_image", {"prompt": "p", "width": 30, "height": 30}, "SIZE_RESAMPLED"),
    ],
)
def test_every_generating_node_reports_an_adaptation_once(
    tiny: Host, node: str, inputs: dict[str, Any], code: str
) -> None:
    extra = {"steps": 2} if node != "image_generation" else {}
    result = tiny.run(node, {**inputs, **extra, "seed": 1})
    assert [n["code"] for n in result.notices].count(code) == 1, result.notices


# -- run-path correctness -------------------------------------------------------------------
def test_a_node_that_generates_nothing_never_imports_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from imagenodes import Host
        host = Host({str(tmp_path / "ws")!r})
        result = host.run("checkerboard", {{"size": 16, "squares": 2}})
        print(json.dumps({{"torch": "torch" in sys.modules,
                          "diffusers": "diffusers" in sys.modules,
                          "image": result.outputs["image"]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"torch": False, "diffusers": False, "image": report["image"]}
    assert report["image"].endswith("image-0.png")


def _raise_on(kind: str) -> Any:
    def on_event(event: Any) -> None:
        if event.type == kind:
            raise RuntimeError(f"callback broke on {kind}")

    return on_event


@pytest.mark.parametrize("kind", ["run.started", "model.loaded", "node.progress"])
def test_a_raising_callback_ends_the_run_coded_with_nothing_written(tiny: Host, kind: str) -> None:
    root = Path(tiny.workspace.root)
    before = files(root)
    with pytest.raises(ImageNodesError) as info:
        tiny.run(
            "generate_image_v2",
            {"prompt": "p", "negative_prompt": "", "aspect_ratio": "1:1", **FAST},
            on_event=_raise_on(kind),
            run_id=f"cb-{kind}",
        )
    assert info.value.code == "GENERATION_FAILED" and "callback broke" in info.value.message
    assert tiny.running() == []  # the run's token is gone
    assert not tiny.cancel(f"cb-{kind}")
    assert files(root) == before


def test_a_callback_raising_after_the_commit_keeps_the_result(tiny: Host) -> None:
    result = tiny.run(
        "generate_image_v2",
        {"prompt": "p", "negative_prompt": "", "aspect_ratio": "1:1", **FAST},
        on_event=_raise_on("run.finished"),
    )
    assert tiny.workspace.exists(result.outputs["images"][0]) and result.run_json
    assert tiny.running() == []


def _fail_writes_under(host: Host, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    real = host.workspace.write_bytes

    def write_bytes(rel: str, data: bytes, **kwargs: Any) -> str:
        if rel.startswith(prefix):
            raise OSError(f"disk full while writing {rel}")
        return real(rel, data, **kwargs)

    monkeypatch.setattr(host.workspace, "write_bytes", write_bytes)


def test_a_failed_session_entry_leaves_the_workspace_as_before(
    tiny_sd: Path, make_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = make_host(tiny_sd, workspace=tmp_path / "ws")
    sid = host.run("create_session", {"name": "s"}).outputs["sessionId"]
    before = files(tmp_path / "ws")
    _fail_writes_under(host, monkeypatch, f"sessions/{sid}/history/")
    with pytest.raises(ImageNodesError) as info:
        host.run("generate_image", {"prompt": "p", "sessionId": sid, "seed": 1, **FAST})
    assert info.value.code == "GENERATION_FAILED" and "disk full" in info.value.message
    assert files(tmp_path / "ws") == before  # no image, no run.json, no history entry
    monkeypatch.undo()
    host.run("generate_image", {"prompt": "p", "sessionId": sid, "seed": 1, **FAST})
    assert len(host.run("session_history", {"sessionId": sid}).outputs["entries"]) == 1


def test_a_failed_cache_entry_leaves_the_workspace_as_before(
    tiny_sd: Path, make_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = make_host(tiny_sd, workspace=tmp_path / "ws")
    _fail_writes_under(host, monkeypatch, "cache/")
    with pytest.raises(ImageNodesError):
        host.run("image_generation", {"prompt": "p", "seed": 3})
    assert files(tmp_path / "ws") == []


def test_validate_rejects_what_run_would_reject(tiny: Host) -> None:
    with pytest.raises(InputError) as info:
        tiny.validate("image_generation", {"prompt": "x", "model": "no-such-family"})
    assert info.value.field == "model" and "embedded" in info.value.message
    schema = next(e for e in tiny.catalog() if e["id"] == "image_generation")["input_schema"]
    allowed = schema["properties"]["model"]["enum"]
    assert allowed[:2] == ["default", "embedded"]
    for choice in allowed:  # every published choice validates
        tiny.validate("image_generation", {"prompt": "x", "model": choice})


# -- the host's result cache serves any cacheable node ---------------------------------------
class CountInput(NodeInput):
    text: str
    shade: int = 0
    note: str = ""  # excluded from the key


class CountOutput(NodeOutput):
    image: str
    reused: bool = False


RUNS: list[str] = []


class Counted(Node[CountInput, CountOutput]):
    id, title, description = "counted", "Counted", "Counts its runs."
    cacheable = True
    cache_exclude = frozenset({"note"})
    cache_marker = "reused"

    def run(self, inputs: CountInput, ctx: RunContext) -> CountOutput:
        RUNS.append(inputs.text)
        image = Image.new("L", (4, 4), inputs.shade)
        return CountOutput(image=ctx.images.save(image, {"text": inputs.text}))


class CountedPack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register(Counted)


def test_any_cacheable_node_is_served_from_the_host_cache(tmp_path: Path) -> None:
    RUNS.clear()
    host = Host(tmp_path / "ws", plugins=[CountedPack()])
    first = host.run("counted", {"text": "a", "shade": 9})
    written = files(tmp_path / "ws")
    assert any(f.startswith("cache/counted/") for f in written)
    again = host.run("counted", {"text": "a", "shade": 9, "note": "other"})
    assert RUNS == ["a"] and again.outputs == {**first.outputs, "reused": True}
    assert [n["code"] for n in again.notices] == ["CACHED_RESULT"]
    assert files(tmp_path / "ws") == written and again.run_json is None
    host.run("counted", {"text": "a", "shade": 10})  # another input: another key
    assert RUNS == ["a", "a"]
    # A hit whose files were deleted since is a miss.
    host.workspace.remove(first.outputs["image"])
    host.run("counted", {"text": "a", "shade": 9})
    assert RUNS == ["a", "a", "a"]


def test_cache_key_includes_source_pixels(tmp_path: Path) -> None:
    from imagenodes.registry.results import ResultCache

    red = [("image", Image.new("RGB", (2, 2), (255, 0, 0)))]
    blue = [("image", Image.new("RGB", (2, 2), (0, 0, 255)))]
    inputs = CountInput(text="a")
    keys = {ResultCache.key(Counted, inputs, imgs, {}) for imgs in (red, blue, red)}
    assert len(keys) == 2
