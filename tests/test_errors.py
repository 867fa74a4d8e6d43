"""The error contract through ``Host.run``: every code, its field, a message naming the
allowed range, the seed's solution text, and an empty workspace afterwards.

Input errors are rejected before any model is touched, so most cases here cost a
few milliseconds; the run-time codes (SOURCE_IMAGE_ERROR, CONNECTION_ERROR,
GENERATION_FAILED, GENERATION_TIMEOUT) use the tiny real models of ``conftest``.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError, hookimpl
from imagenodes.engine.aspect import ASPECT_RATIOS
from imagenodes.engine.profiles import TEXT_TO_IMAGE, ModelProfile
from imagenodes.errors import SOLUTIONS

SEEDS = Path(__file__).parent / "seeds"

#: Seed "Error Type" wording → our code.  A row not listed here fails the test, so a
#: new row in a seed's table cannot go unmapped.
SEED_ERROR_TYPES = {
    "Empty Prompt": "EMPTY_PROMPT",
    "Invalid Guidance Scale": "INVALID_GUIDANCE_SCALE",
    "Invalid Guidance": "INVALID_GUIDANCE_SCALE",
    "Invalid Steps": "INVALID_STEPS",
    "Batch Size Exceeded": "BATCH_SIZE_EXCEEDED",
    "Invalid Aspect Ratio": "INVALID_ASPECT_RATIO",
    "Invalid Strength": "INVALID_STRENGTH",
    "PixelML Connection Error": "CONNECTION_ERROR",
    "Invalid Connection": "CONNECTION_ERROR",
    "Source Image Error": "SOURCE_IMAGE_ERROR",
    "Generation Failed": "GENERATION_FAILED",
    "Generation Timeout": "GENERATION_TIMEOUT",
}
NODE_SEEDS = {"generate_image_v2": "000", "image_to_image": "001"}


def seed_solutions(prefix: str) -> dict[str, str]:
    """Code → solution text from a seed's "Error Handling" table (markdown unescaped)."""
    text = next(SEEDS.glob(f"{prefix}_*.txt")).read_text()
    table = text.split("## Error Handling", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in table.splitlines():
        cells = [c.strip().replace("\\_", "_") for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Error Type", "") or set(cells[0]) <= {"-"}:
            continue
        assert cells[0] in SEED_ERROR_TYPES, f"seed {prefix}: unmapped error type {cells[0]!r}"
        out[SEED_ERROR_TYPES[cells[0]]] = cells[2]
    return out


SEED_SOLUTIONS = {node: seed_solutions(prefix) for node, prefix in NODE_SEEDS.items()}


def expected_solution(node: str, code: str) -> str:
    """The seed's text where the node's seed has a row for the code, else the shared one."""
    return SEED_SOLUTIONS.get(node, {}).get(code, SOLUTIONS[code])


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def png_data_uri(size: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def host(make_host: Callable[..., Host], ws: Path) -> Host:
    return make_host(workspace=ws)


def run_error(host: Host, node: str, inputs: Any, **kwargs: Any) -> ImageNodesError:
    """Run, expect an ImageNodesError, and check the workspace stayed empty."""
    with pytest.raises(ImageNodesError) as info:
        host.run(node, inputs, **kwargs)
    root = Path(host.workspace.root)
    assert files_in(root) == [], f"{node} left files after {info.value.code}"
    return info.value


V2 = {"prompt": "a red circle on a blue background", "negative_prompt": ""}
I2I = {**V2, "source_image": "missing.png"}
GEN = {"prompt": "a red circle on a blue background"}
BASES = {"generate_image_v2": V2, "image_to_image": I2I, "image_generation": GEN}

# (node, changes, code, field, fragments the message must contain); a change to
# MISSING removes the key.
MISSING = object()
INPUT_CASES: list[tuple[str, dict[str, Any], str, str, tuple[str, ...]]] = [
    # EMPTY_PROMPT: empty, whitespace-only, null, missing — on every node.
    *[
        (node, {"prompt": value}, "EMPTY_PROMPT", "prompt", ("empty",))
        for node in BASES
        for value in ("", "   \t\n", None, MISSING)
    ],
    # Guidance: (0, 15] on both seed nodes, image guidance too.
    (
        "generate_image_v2",
        {"guidance_scale": 15.5},
        "INVALID_GUIDANCE_SCALE",
        "guidance_scale",
        ("> 0", "≤ 15", "15.5"),
    ),
    (
        "generate_image_v2",
        {"guidance_scale": 0},
        "INVALID_GUIDANCE_SCALE",
        "guidance_scale",
        ("> 0", "≤ 15"),
    ),
    (
        "image_to_image",
        {"guidance_scale": -1},
        "INVALID_GUIDANCE_SCALE",
        "guidance_scale",
        ("> 0", "≤ 15"),
    ),
    (
        "image_to_image",
        {"image_guidance_scale": 20},
        "INVALID_GUIDANCE_SCALE",
        "image_guidance_scale",
        ("> 0", "≤ 15", "20"),
    ),
    # Steps: (0, 50].
    ("generate_image_v2", {"steps": 51}, "INVALID_STEPS", "steps", ("50", "51")),
    ("generate_image_v2", {"steps": 0}, "INVALID_STEPS", "steps", ("> 0", "≤ 50")),
    ("image_to_image", {"steps": 500}, "INVALID_STEPS", "steps", ("≤ 50",)),
    # Batch size: (0, 8].
    ("generate_image_v2", {"batch_size": 9}, "BATCH_SIZE_EXCEEDED", "batch_size", ("≤ 8", "9")),
    ("image_to_image", {"batch_size": 0}, "BATCH_SIZE_EXCEEDED", "batch_size", ("> 0", "≤ 8")),
    # Aspect ratio: the message lists every supported ratio.
    (
        "generate_image_v2",
        {"aspect_ratio": "7:5"},
        "INVALID_ASPECT_RATIO",
        "aspect_ratio",
        ASPECT_RATIOS,
    ),
    (
        "generate_image_v2",
        {"aspect_ratio": "16:9_4K"},
        "INVALID_ASPECT_RATIO",
        "aspect_ratio",
        ("16:9_FHD", "16:9_4K"),
    ),
    # Strength: (0, 1].
    ("image_to_image", {"strength": 0}, "INVALID_STRENGTH", "strength", ("> 0", "≤ 1")),
    ("image_to_image", {"strength": 1.5}, "INVALID_STRENGTH", "strength", ("≤ 1", "1.5")),
    ("image_generation", {"strength": 2}, "INVALID_STRENGTH", "strength", ("> 0", "≤ 1")),
    # INVALID_INPUT: wrong type, unknown field, missing required field.
    ("generate_image_v2", {"steps": "many"}, "INVALID_INPUT", "steps", ("integer", "'many'")),
    (
        "generate_image_v2",
        {"guidance_scale": "high"},
        "INVALID_INPUT",
        "guidance_scale",
        ("number",),
    ),
    ("generate_image_v2", {"batch_size": 2.5}, "INVALID_INPUT", "batch_size", ("integer",)),
    ("generate_image_v2", {"prompt": 5}, "INVALID_INPUT", "prompt", ("string",)),
    ("generate_image_v2", {"seed": "lucky"}, "INVALID_INPUT", "seed", ("integer",)),
    (
        "generate_image_v2",
        {"colour": "red"},
        "INVALID_INPUT",
        "colour",
        ("unknown field", "negative_prompt", "aspect_ratio"),
    ),
    (
        "generate_image_v2",
        {"negative_prompt": MISSING},
        "INVALID_INPUT",
        "negative_prompt",
        ("missing",),
    ),
    (
        "image_to_image",
        {"negative_prompt": MISSING},
        "INVALID_INPUT",
        "negative_prompt",
        ("missing",),
    ),
    ("image_to_image", {"source_image": MISSING}, "INVALID_INPUT", "source_image", ("missing",)),
    ("image_to_image", {"width": -8}, "INVALID_INPUT", "width", ("≥ 0", "-8")),
    ("image_to_image", {"prompt_2": ["a", "b"]}, "INVALID_INPUT", "prompt_2", ("string",)),
    ("image_generation", {"num_images": "two"}, "INVALID_INPUT", "num_images", ("integer",)),
    ("image_generation", {"seed": -1}, "INVALID_INPUT", "seed", ("≥ 0", "4294967296")),
    (
        "image_generation",
        {"image_size": "4K"},
        "INVALID_INPUT",
        "image_size",
        ("native", "1K", "2K"),
    ),
    (
        "image_generation",
        {"image_sources": "one.png"},
        "INVALID_INPUT",
        "image_sources",
        ("a list of at most 8 items",),
    ),
    (
        "image_generation",
        {"model": "dall-e-3"},
        "INVALID_INPUT",
        "model",
        ("default", "embedded", "sd", "dall-e-3"),
    ),
    ("image_generation", {"extra": 1}, "INVALID_INPUT", "extra", ("unknown field", "prompt")),
]


def _inputs(node: str, changes: dict[str, Any]) -> dict[str, Any]:
    data = dict(BASES[node])
    for key, value in changes.items():
        if value is MISSING:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "node,changes,code,field,fragments",
    INPUT_CASES,
    ids=[f"{c[0]}-{c[2]}-{'-'.join(map(str, c[1]))}-{i}" for i, c in enumerate(INPUT_CASES)],
)
def test_input_errors_have_code_field_range_and_seed_solution(
    host: Host,
    node: str,
    changes: dict[str, Any],
    code: str,
    field: str,
    fragments: tuple[str, ...],
) -> None:
    err = run_error(host, node, _inputs(node, changes))
    assert err.code == code, err.to_dict()
    assert err.field == field
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    assert err.solution == expected_solution(node, code)
    assert err.to_dict() == {
        "code": code,
        "field": field,
        "message": err.message,
        "solution": err.solution,
    }


def test_seed_tables_are_parsed_and_differ_where_the_seeds_do() -> None:
    """Guards the expectation table above: both seeds parsed, and seed 001's own
    wording (not seed 000's) is what image_to_image must return."""
    v2, i2i = SEED_SOLUTIONS["generate_image_v2"], SEED_SOLUTIONS["image_to_image"]
    assert set(v2) == {
        "EMPTY_PROMPT",
        "INVALID_GUIDANCE_SCALE",
        "INVALID_STEPS",
        "BATCH_SIZE_EXCEEDED",
        "INVALID_ASPECT_RATIO",
        "CONNECTION_ERROR",
        "GENERATION_TIMEOUT",
    }
    assert "SOURCE_IMAGE_ERROR" in i2i and "INVALID_STRENGTH" in i2i
    assert i2i["EMPTY_PROMPT"] != v2["EMPTY_PROMPT"]
    assert i2i["INVALID_GUIDANCE_SCALE"] == (
        "Keep guidance_scale and image_guidance_scale between 0.1 and 15"
    )
    for code, text in v2.items():
        assert SOLUTIONS[code] == text  # the shared table is seed 000's wording


def test_unknown_node_lists_the_registered_ids(host: Host) -> None:
    err = run_error(host, "generate_image_v3", V2)
    assert err.code == "UNKNOWN_NODE" and err.field == "node"
    assert "generate_image_v3" in err.message
    for node in BASES:
        assert node in err.message
    assert err.solution == SOLUTIONS["UNKNOWN_NODE"]


def test_inputs_that_are_not_an_object_are_invalid_input(host: Host) -> None:
    err = run_error(host, "generate_image_v2", ["a red circle"])
    assert err.code == "INVALID_INPUT" and "JSON object" in err.message


def test_validate_alone_applies_the_node_solution(host: Host) -> None:
    """Builders validate forms without running; the seed text must be the same."""
    with pytest.raises(ImageNodesError) as info:
        host.validate("image_to_image", _inputs("image_to_image", {"steps": 99}))
    assert info.value.code == "INVALID_STEPS"
    assert info.value.solution == SEED_SOLUTIONS["image_to_image"]["INVALID_STEPS"]


# -- run-time codes --------------------------------------------------------------------
@pytest.mark.parametrize(
    "node,inputs,field",
    [
        ("image_to_image", {**I2I, "source_image": "missing.png"}, "source_image"),
        ("image_to_image", {**I2I, "source_image": "data:image/png;base64,!!!"}, "source_image"),
        ("image_to_image", {**I2I, "source_image": "   "}, "source_image"),
        ("image_generation", {**GEN, "image_sources": ["missing.png"]}, "image_sources.0"),
        (
            "image_generation",
            {**GEN, "image_sources": [png_data_uri(), "data:image/png;base64,AAAA"]},
            "image_sources.1",
        ),
    ],
)
def test_source_image_errors(tiny_host: Host, node: str, inputs: dict, field: str) -> None:
    err = run_error(tiny_host, node, inputs)
    assert err.code == "SOURCE_IMAGE_ERROR" and err.field == field
    assert err.solution == expected_solution(node, "SOURCE_IMAGE_ERROR")


def _valid(node: str) -> dict[str, Any]:
    if node == "image_to_image":
        return {**I2I, "source_image": png_data_uri(), "steps": 2, "width": 64, "height": 64}
    if node == "generate_image_v2":
        return {**V2, "steps": 2, "aspect_ratio": "1:1"}
    return dict(GEN)


@pytest.mark.parametrize("node", list(BASES))
def test_invalid_connection_value_is_connection_error(
    ws: Path, node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Configured through the environment, so it is validated when a run needs it.
    monkeypatch.setenv("IMAGENODES_CONNECTION_DEFAULT_DEVICE", "tpu")
    host = Host(ws)
    err = run_error(host, node, _valid(node))
    assert err.code == "CONNECTION_ERROR" and err.field == "device"
    assert "'default'" in err.message and "device" in err.message
    assert "'cpu'" in err.message and "'cuda'" in err.message  # names the allowed values
    assert "PixelML Connection" in err.message
    assert err.solution == expected_solution(node, "CONNECTION_ERROR")


@pytest.mark.slow  # the run reaches the engine (and imports torch) before the check
@pytest.mark.parametrize("node", list(BASES))
def test_missing_model_folder_is_connection_error(ws: Path, tmp_path: Path, node: str) -> None:
    missing = tmp_path / "no-such-model"
    host = Host(ws, connections={"default": {"model": str(missing)}})
    err = run_error(host, node, _valid(node))
    assert err.code == "CONNECTION_ERROR" and err.field == "model"
    assert str(missing) in err.message
    assert err.solution == expected_solution(node, "CONNECTION_ERROR")


@pytest.mark.parametrize("node", list(BASES))
def test_unknown_connection_name_is_connection_error(host: Host, node: str) -> None:
    err = run_error(host, node, _valid(node), connections={"pixelml": "gpu"})
    assert err.code == "CONNECTION_ERROR" and err.field == "connection"
    assert "'gpu'" in err.message and "default" in err.message  # what exists instead
    assert err.solution == expected_solution(node, "CONNECTION_ERROR")


@pytest.mark.parametrize("node", ["generate_image_v2", "image_generation"])
def test_model_family_that_cannot_do_the_task_is_generation_failed(
    tiny_models: Callable[[str], Path], ws: Path, node: str
) -> None:
    """A real InstructPix2Pix model asked for text-to-image: routing refuses it."""
    host = Host(ws, connections={"default": {"model": str(tiny_models("instruct-pix2pix"))}})
    err = run_error(host, node, _valid(node))
    assert err.code == "GENERATION_FAILED" and err.field == "model"
    assert "text-to-image" in err.message and "instruction-edit" in err.message
    assert err.solution == SEED_SOLUTIONS["image_to_image"]["GENERATION_FAILED"]


class TextOnlyProfiles:
    """A family pack whose tiny-SD family declares text-to-image only, so an
    image-to-image request is refused by routing for real."""

    @hookimpl
    def register_model_profiles(self, register: Callable[[Any], None]) -> None:
        register(
            ModelProfile(
                name="tiny-sd-text-only",
                title="Tiny SD, text-to-image only",
                pipelines={TEXT_TO_IMAGE: "StableDiffusionPipeline"},
                id_patterns=("*tiny-sd*",),
                native_resolution=64,
                max_resolution=128,
                priority=60,
            )
        )


def test_image_to_image_on_a_text_only_family_is_generation_failed(tiny_sd: Path, ws: Path) -> None:
    host = Host(ws, connections={"default": {"model": str(tiny_sd)}}, plugins=[TextOnlyProfiles()])
    err = run_error(host, "image_to_image", _valid("image_to_image"))
    assert err.code == "GENERATION_FAILED" and err.field == "model"
    assert "image-to-image" in err.message
    assert err.solution == SEED_SOLUTIONS["image_to_image"]["GENERATION_FAILED"]


@pytest.mark.parametrize("node", ["generate_image_v2", "image_to_image", "image_generation"])
def test_timeout_is_generation_timeout(
    make_host: Callable[..., Host], tiny_sd: Path, ws: Path, node: str
) -> None:
    host = make_host(tiny_sd, workspace=ws, tiny_profile=True)

    def slow(event: Any) -> None:  # a slow consumer makes every step take ≥ 0.1 s
        if event.type == "node.progress":
            time.sleep(0.1)

    inputs = _valid(node)
    if node != "image_generation":
        inputs["steps"] = 50
    started = time.monotonic()
    err = run_error(host, node, inputs, timeout=0.3, on_event=slow)
    assert time.monotonic() - started < 5, "the caller must not wait for the worker"
    assert err.code == "GENERATION_TIMEOUT" and err.field == "timeout"
    assert re.search(r"timeout of 0\.3 s", err.message)
    assert err.solution == expected_solution(node, "GENERATION_TIMEOUT")


def test_non_positive_timeout_is_invalid_input(host: Host) -> None:
    err = run_error(host, "generate_image_v2", V2, timeout=-1)
    assert err.code == "INVALID_INPUT" and err.field == "timeout" and "> 0" in err.message


def test_range_descriptions_name_every_bound_including_multiples() -> None:
    from imagenodes.registry.validation import describe_range

    width = {"type": "integer", "minimum": 256, "maximum": 2048, "multipleOf": 8}
    assert describe_range(width) == "integer ≥ 256 and ≤ 2048 and a multiple of 8"
    optional = {"anyOf": [{"type": "integer", "minimum": 1, "multipleOf": 4}, {"type": "null"}]}
    assert describe_range(optional) == "integer/null ≥ 1 and a multiple of 4"
