"""generate_image (seed 004): output shape, exact sizes, sessions, engine status, errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError
from imagenodes.nodes.generate_image import GenerateImage
from imagenodes.workspace import read_imagenodes_metadata

FAST = {"steps": 2}


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host], tiny_sd: Path) -> Host:
    """Tiny SD routed to the 64-px test profile (max 128 px)."""
    return make_host(tiny_sd, tiny_profile=True)


def decode(item: dict) -> tuple[bytes, Image.Image]:
    data = base64.b64decode(item["data"], validate=True)
    image = Image.open(io.BytesIO(data))
    image.load()
    return data, image


def test_output_is_the_seed_shape_with_measured_times(host: Host) -> None:
    result = host.run("generate_image", {"prompt": "a red circle", "seed": 42, **FAST})
    out = result.outputs
    assert set(out) == {"content", "images", "sessionId"} and len(out["content"]) == 1
    item = out["content"][0]
    assert item["type"] == "image" and item["mimeType"] == "image/png"
    meta = item["metadata"]
    assert set(meta) == {
        "latencyMs",
        "profiling",
        "seed",
        "width",
        "height",
        "steps",
        "guidance_scale",
    }
    assert set(meta["profiling"]) == {"initTime", "generationTime", "encodingTime"}
    assert (meta["seed"], meta["width"], meta["height"]) == (42, 512, 512)  # seed defaults
    assert (meta["steps"], meta["guidance_scale"]) == (2, 7.5)
    prof = meta["profiling"]
    assert prof["initTime"] > 0 and prof["generationTime"] > 0 and prof["encodingTime"] > 0
    assert prof["generationTime"] < meta["latencyMs"]
    assert prof["initTime"] + prof["generationTime"] + prof["encodingTime"] <= meta["latencyMs"] + 1
    data, image = decode(item)
    assert image.format == "PNG" and image.size == (512, 512)
    # The returned PNG is the stored file, byte for byte.
    assert host.workspace.read_bytes(out["images"][0]) == data
    # 512x512 is 64 times the tiny model's 64x64 budget: drawn there, then upscaled.
    assert read_imagenodes_metadata(data)["generated_size"] == "64x64"
    assert [n["code"] for n in result.notices] == ["SIZE_UPSCALED"]


@pytest.mark.parametrize(("width", "height", "generated"), [(60, 70, "64x72"), (1, 1, "8x8")])
def test_sizes_the_model_cannot_make_are_resized_to_exactly_the_request(
    host: Host, width: int, height: int, generated: str
) -> None:
    result = host.run(
        "generate_image", {"prompt": "a square", "width": width, "height": height, **FAST}
    )
    data, image = decode(result.outputs["content"][0])
    assert image.size == (width, height)
    assert read_imagenodes_metadata(data)["generated_size"] == generated
    assert result.outputs["content"][0]["metadata"]["width"] == width


def test_same_seed_same_image_and_random_seed_is_returned(host: Host) -> None:
    args = {"prompt": "a star", "width": 64, "height": 64, **FAST}
    a = host.run("generate_image", {**args, "seed": 7}).outputs["content"][0]
    b = host.run("generate_image", {**args, "seed": 7}).outputs["content"][0]
    assert decode(a)[1].tobytes() == decode(b)[1].tobytes()
    c = host.run("generate_image", args).outputs["content"][0]["metadata"]["seed"]
    assert isinstance(c, int) and 0 <= c < 2**32


def test_session_history_records_every_generation(host: Host) -> None:
    session = host.run("create_session", {"name": "iterations"}).outputs
    sid = session["sessionId"]
    refs = []
    for prompt in ("a red circle", "a redder circle"):
        out = host.run(
            "generate_image",
            {"prompt": prompt, "sessionId": sid, "width": 48, "height": 48, "seed": 3, **FAST},
        ).outputs
        assert out["sessionId"] == sid
        refs.append(out["images"][0])
    entries = host.run("session_history", {"sessionId": sid}).outputs["entries"]
    assert [e["prompt"] for e in entries] == ["a red circle", "a redder circle"]
    assert [e["image"] for e in entries] == refs
    assert entries[0]["seed"] == 3 and entries[0]["parameters"] == {
        "width": 48,
        "height": 48,
        "steps": 2,
        "guidance_scale": 7.5,
        "seed": 3,
    }
    assert all(host.workspace.exists(e["image"]) for e in entries)
    assert host.sessions.history(sid, limit=1)[0]["prompt"] == "a redder circle"


def test_unknown_session_is_invalid_session_and_stores_nothing(host: Host) -> None:
    before = sorted(Path(host.workspace.root).rglob("*"))
    with pytest.raises(ImageNodesError) as info:
        host.run("generate_image", {"prompt": "x", "sessionId": "session-2025-12-11-001"})
    assert info.value.code == "INVALID_SESSION" and info.value.field == "sessionId"
    assert sorted(Path(host.workspace.root).rglob("*")) == before


@pytest.mark.parametrize(
    ("inputs", "code", "field"),
    [
        ({"prompt": ""}, "EMPTY_PROMPT", "prompt"),
        ({}, "EMPTY_PROMPT", "prompt"),
        ({"prompt": "x", "width": 0}, "INVALID_DIMENSIONS", "width"),
        ({"prompt": "x", "height": 2049}, "INVALID_DIMENSIONS", "height"),
        ({"prompt": "x", "steps": 101}, "INVALID_STEPS", "steps"),
        ({"prompt": "x", "guidance_scale": 0.5}, "INVALID_GUIDANCE_SCALE", "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 21}, "INVALID_GUIDANCE_SCALE", "guidance_scale"),
        ({"prompt": "x", "seed": 2**32}, "INVALID_INPUT", "seed"),
    ],
)
def test_input_errors_name_the_allowed_range(host: Host, inputs, code, field) -> None:
    with pytest.raises(ImageNodesError) as info:
        host.run("generate_image", inputs)
    assert (info.value.code, info.value.field) == (code, field)
    if code == "INVALID_DIMENSIONS":
        assert "≥ 1" in info.value.message and "≤ 2048" in info.value.message
    if code in GenerateImage.solutions:  # seed 004's ranges, not seed 000's
        assert info.value.solution == GenerateImage.solutions[code]


def test_timeout_is_90_seconds_and_enforced(host: Host) -> None:
    assert GenerateImage.timeout == 90
    entry = next(e for e in host.catalog() if e["id"] == "generate_image")
    assert entry["timeout"] == 90
    with pytest.raises(ImageNodesError) as info:
        host.run("generate_image", {"prompt": "slow", "steps": 100}, timeout=0.05)
    assert info.value.code == "GENERATION_TIMEOUT"


# -- engine status ---------------------------------------------------------------------
def test_check_engine_status_reports_and_initialises(tiny_sd: Path, tmp_path: Path) -> None:
    fresh = Host(tmp_path / "ws", connections={"default": {"model": str(tiny_sd)}})
    status = fresh.run("check_engine_status", {}).outputs
    assert status["initialized"] is False and status["status"] == "not_loaded"
    assert status["model"] == str(tiny_sd) and status["device"] == "cpu"
    assert status["memory"]["processRssBytes"] > 0 and status["loadedModels"] == []
    status = fresh.run("check_engine_status", {"initialize": True}).outputs
    assert status["initialized"] is True and status["status"] == "ready"
    assert status["loadMs"] > 0 and status["memory"]["cacheBytes"] > 0
    assert status["loadedModels"][0]["source"] == str(tiny_sd)
    # The next generation finds the model loaded.
    out = fresh.run("generate_image", {"prompt": "x", "width": 64, "height": 64, **FAST})
    assert out.timings["load_ms"] < 50


@pytest.mark.slow  # tries to load pipelines (imports torch)
def test_unloadable_model_is_engine_not_initialized(tmp_path: Path) -> None:
    broken = Host(tmp_path / "ws", connections={"default": {"model": str(tmp_path / "nothing")}})
    status = broken.run("check_engine_status", {"initialize": True}).outputs
    assert status["status"] == "unavailable" and status["initialized"] is False
    assert status["error"]["code"] == "CONNECTION_ERROR"
    with pytest.raises(ImageNodesError) as info:
        broken.run("generate_image", {"prompt": "x"})
    err = info.value
    assert err.code == "ENGINE_NOT_INITIALIZED"
    assert "neither a local folder nor a hub id" in err.message  # the underlying reason
    assert err.details["cause"] == "CONNECTION_ERROR" and "check-engine-status" in err.solution
    # A folder that is not a diffusers pipeline fails the same way.
    (tmp_path / "empty").mkdir()
    broken = Host(tmp_path / "ws", connections={"default": {"model": str(tmp_path / "empty")}})
    with pytest.raises(ImageNodesError) as info:
        broken.run("generate_image", {"prompt": "x"})
    assert info.value.code == "ENGINE_NOT_INITIALIZED" and "model_index.json" in info.value.message
