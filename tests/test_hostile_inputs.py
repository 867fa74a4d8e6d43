"""Values a schema accepts never end as GENERATION_FAILED; junk gets an input code."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError, Node, NodeInput, NodeOutput, RunContext, hookimpl
from imagenodes.errors import SourceImageError
from imagenodes.workspace import Workspace, image_to_data_uri, load_image

V2 = {"prompt": "a red circle on a blue background", "negative_prompt": "", "aspect_ratio": "1:1"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    return Host(tmp_path_factory.mktemp("hostile-ws"))


@pytest.mark.parametrize(
    ("node", "inputs", "field"),
    [
        ("generate_image_v2", {**V2, "seed": 2**70}, "seed"),
        ("generate_image_v2", {**V2, "seed": -1}, "seed"),
        ("generate_image_v2", {**V2, "prompt": "a \ud800 cat"}, "prompt"),
        ("generate_image_v2", {**V2, "negative_prompt": "\udfff"}, "negative_prompt"),
        ("image_generation", {"prompt": "x", "negative_prompt": "\ud800"}, "negative_prompt"),
        ("generate_image", {"prompt": "\ud83d"}, "prompt"),
    ],
)
def test_out_of_range_seeds_and_broken_unicode_are_input_errors(
    host: Host, node: str, inputs: dict, field: str
) -> None:
    with pytest.raises(ImageNodesError) as err:
        host.validate(node, inputs)
    assert (err.value.code, err.value.field) == ("INVALID_INPUT", field)
    assert "2**70" not in err.value.message


def test_the_largest_seed_is_accepted(host: Host) -> None:
    assert host.validate("generate_image_v2", {**V2, "seed": 2**32 - 1}).seed == 2**32 - 1


@pytest.mark.slow
@pytest.mark.parametrize(("strength", "steps"), [(0.01, 20), (0.3, 2)])
def test_a_tiny_strength_still_denoises_one_step(host: Host, strength: float, steps: int) -> None:
    source = image_to_data_uri(Image.new("RGB", (64, 64), (200, 30, 30)))
    result = host.run(
        "image_to_image",
        {
            "prompt": V2["prompt"],
            "negative_prompt": "",
            "source_image": source,
            "strength": strength,
            "steps": steps,
            "seed": 1,
        },
    )
    assert len(result.outputs["images"]) == 1
    raised = [n for n in result.notices if n["code"] == "STRENGTH_RAISED"]
    assert len(raised) == 1 and raised[0]["requested"] == strength
    assert int(steps * raised[0]["applied"] + 1e-9) >= 1


@pytest.mark.slow
def test_image_generation_with_a_tiny_strength(host: Host, tmp_path: Path) -> None:
    source = image_to_data_uri(Image.new("RGB", (64, 64), (30, 30, 200)))
    result = host.run(
        "image_generation",
        {"prompt": "a blue square", "image_sources": [source], "strength": 0.001, "seed": 2},
    )
    assert [n["code"] for n in result.notices].count("STRENGTH_RAISED") == 1


# -- run identity ---------------------------------------------------------------------
class _SlowInput(NodeInput):
    label: str = "x"


class _SlowOutput(NodeOutput):
    image: str


class _Slow(Node[_SlowInput, _SlowOutput]):
    id, title, description = "slow_square", "Slow square", "Stores one image after 0.3 s."

    def run(self, inputs: _SlowInput, ctx: RunContext) -> _SlowOutput:
        time.sleep(0.3)
        return _SlowOutput(image=ctx.images.save(Image.new("RGB", (4, 4), inputs.label)))


class _SlowPack:
    @hookimpl
    def register_nodes(self, register: Any) -> None:
        register(_Slow)


def test_a_run_id_cannot_be_reused(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws", plugins=[_SlowPack()])
    first = host.run("slow_square", {"label": "red"}, run_id="r-1")
    with pytest.raises(ImageNodesError) as err:
        host.run("slow_square", {"label": "blue"}, run_id="r-1")
    assert (err.value.code, err.value.field) == ("INVALID_INPUT", "run_id")
    with Image.open(io.BytesIO(host.workspace.read_bytes(first.outputs["image"]))) as im:
        assert im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # not overwritten
    outcomes: list[str] = []

    def go(label: str) -> None:
        try:
            host.run("slow_square", {"label": label}, run_id="r-2")
            outcomes.append("ok")
        except ImageNodesError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=go, args=(c,)) for c in ("red", "blue")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["INVALID_INPUT", "ok"]


# -- files that are not regular, 16-bit images ---------------------------------------
def test_a_fifo_in_the_workspace_is_refused_without_blocking(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.write_bytes("ok.png", b"x")
    os.mkfifo(tmp_path / "ws" / "pipe.png")
    started = time.monotonic()
    with pytest.raises(SourceImageError) as err:
        load_image("pipe.png", ws)
    assert time.monotonic() - started < 2 and "not a regular file" in err.value.message


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np

    ws = Workspace(tmp_path / "ws")
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(buf, "PNG")
    ws.write_bytes("grey16.png", buf.getvalue())
    image = load_image("grey16.png", ws)
    assert image.mode == "RGB" and image.getpixel((1, 1)) == (128, 128, 128)


# -- crash leftovers -------------------------------------------------------------------
_CRASH = """
import os, sys
from imagenodes import Host
from imagenodes.workspace import store
host = Host(sys.argv[1])
point = sys.argv[2]
if point == "before-run-json":
    real = host.workspace.write_bytes
    def write_bytes(rel, data, **kw):
        if rel.endswith("run.json"):
            os._exit(9)  # killed after the images, before the manifest
        return real(rel, data, **kw)
    host.workspace.write_bytes = write_bytes
else:
    def replace(src, dst):
        os._exit(9)  # killed after a temp write, before its rename
    store.os.replace = replace
host.run("checkerboard", {"size": 16})
"""


@pytest.mark.parametrize("point", ["before-run-json", "before-rename"])
def test_leftovers_of_a_killed_run_are_swept_at_start_up(tmp_path: Path, point: str) -> None:
    import subprocess
    import sys

    ws = tmp_path / "ws"
    out = subprocess.run([sys.executable, "-c", _CRASH, str(ws), point], timeout=120)
    assert out.returncode == 9
    leftovers = [p for p in ws.rglob("*") if p.is_file()]
    assert leftovers, "the child left nothing: the fault was not injected"
    assert Host(ws).swept == []  # younger than the grace period: kept (may be live)
    old = time.time() - 7200
    for path in [*leftovers, *(p for p in ws.rglob("*") if p.is_dir())]:
        os.utime(path, (old, old))
    host = Host(ws)
    assert host.swept and all(s.startswith("runs/") or ".imagenodes-tmp-" in s for s in host.swept)
    assert [p for p in ws.rglob("*") if p.is_file()] == []
    assert host.run("checkerboard", {"size": 16}).outputs["image"]


def test_a_refused_path_is_shown_as_it_was_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(SourceImageError) as err:
        load_image("runs/a.png?p=../../etc/passwd", ws)
    # It used to show 'runs/a.png' (query dropped) while saying it contained '..'.
    assert "'runs/a.png?p=../../etc/passwd' contains '..'" in err.value.message
    with pytest.raises(SourceImageError) as err:
        load_image("https://x.example/../a.png?X-Amz-Signature=secret", ws)
    assert "secret" not in err.value.message


# -- §6: a caller's model spec is held to the connection's model policy ----------------
SMALL_REQ = {"steps": 2, "width": 64, "height": 64, "seed": 1}


@pytest.mark.slow
def test_base_model_paths_outside_the_models_folder_get_one_message(
    make_host: Any, tiny_sd: Path, tmp_path: Path
) -> None:
    """Before: any host path was loaded, and "no model_index.json" vs "neither a local
    folder nor a hub id" told an existing folder from a missing one."""
    models = tmp_path / "models"
    models.mkdir()
    host = make_host(
        tiny_sd, tiny_profile=True, connections={"default": {"models_dir": str(models)}}
    )
    messages = {}
    for spec in (
        str(tiny_sd),  # an existing model folder, by absolute path
        str(tmp_path),  # an existing folder that is no model
        "/etc/hostname",  # an existing file
        "/no/such/model",
        "../models/x",
        "~/models",
        f"{tiny_sd.name}/../{tiny_sd.name}",
        "missing-name",
    ):
        with pytest.raises(ImageNodesError) as err:
            host.run(
                "image_generator", {"images": [{"prompt": "x", "baseModel": spec, **SMALL_REQ}]}
            )
        assert (err.value.code, err.value.field) == ("CONNECTION_ERROR", "images.0.baseModel")
        messages[spec] = err.value.message.replace(repr(spec), "<spec>")
    assert len(set(messages.values())) == 1, messages
    assert "not an allowed model" in next(iter(messages.values()))


@pytest.mark.slow
def test_base_model_folders_under_models_dir_and_allowed_paths_run(
    make_host: Any, tiny_sd: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models" / "org"
    models.mkdir(parents=True)
    (models / "tiny").symlink_to(tiny_sd)  # the admin links a model into models_dir
    host = make_host(
        tiny_sd,
        tiny_profile=True,
        connections={"default": {"models_dir": str(tmp_path / "models")}},
    )
    result = host.run(
        "image_generator", {"images": [{"prompt": "x", "baseModel": "org/tiny", **SMALL_REQ}]}
    )
    assert len(result.outputs["images"]) == 1
    # The connection's own model may be any path (it is configuration, not input), and
    # allow_model_paths lets callers name local folders too.
    trusting = make_host(
        tiny_sd, tiny_profile=True, connections={"default": {"allow_model_paths": True}}
    )
    result = trusting.run(
        "image_generator", {"images": [{"prompt": "x", "baseModel": str(tiny_sd), **SMALL_REQ}]}
    )
    assert len(result.outputs["images"]) == 1
