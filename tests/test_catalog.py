"""The catalog is the builder's contract: seed nodes' schemas equal the seeds'."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from imagenodes import Host
from tests.helpers import NODE_IDS

SEEDS = Path(__file__).parent / "seeds"


def seed_schemas(prefix: str) -> tuple[dict, dict]:
    """The two ```json blocks (input, output) of a seed document."""
    text = next(SEEDS.glob(f"{prefix}_*.txt")).read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2, "seed must hold an input and an output schema"
    return json.loads(blocks[0]), json.loads(blocks[1])


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host]) -> Host:
    return make_host()


@pytest.mark.parametrize(
    "prefix,node_id", [("000", "generate_image_v2"), ("001", "image_to_image")]
)
def test_seed_node_schemas_equal_the_seed(host: Host, prefix: str, node_id: str) -> None:
    expected_in, expected_out = seed_schemas(prefix)
    entry = next(e for e in host.catalog() if e["id"] == node_id)
    assert entry["input_schema"] == expected_in
    assert entry["output_schema"] == expected_out
    # dict equality treats 8 and 8.0 alike; the JSON text must match too.
    assert json.dumps(entry["input_schema"], sort_keys=True) == json.dumps(
        expected_in, sort_keys=True
    )


def test_catalog_entries_are_json_ready_and_complete(host: Host) -> None:
    catalog = host.catalog()
    assert sorted(e["id"] for e in catalog) == sorted(NODE_IDS)  # each id once
    for entry in catalog:
        for key in (
            "id",
            "version",
            "title",
            "description",
            "category",
            "input_schema",
            "output_schema",
            "connections",
            "availability",
        ):
            assert key in entry, (entry["id"], key)
        assert re.match(r"^\d+\.\d+\.\d+", entry["version"])
        json.dumps(entry)  # JSON-ready
    v2 = next(e for e in catalog if e["id"] == "generate_image_v2")
    assert v2["connections"] == [
        {
            "name": "PixelML Connection",
            "description": "The PixelML connection to call PixelML API.",
            "required": True,
            "category": "pixelml",
        }
    ]
    assert v2["availability"] == {"available": True, "reason": None}


def test_image_generation_schema_offers_registered_models(host: Host) -> None:
    entry = next(e for e in host.catalog() if e["id"] == "image_generation")
    props = entry["input_schema"]["properties"]
    assert props["model"]["enum"] == [
        "default",
        "embedded",
        *sorted(["sd", "sdxl", "sd-turbo", "sdxl-turbo", "instruct-pix2pix", "flux"]),
    ]
    for name in ("prompt", "image_sources", "aspect_ratio", "image_size", "num_images"):
        assert props[name]["description"], name
    assert entry["input_schema"]["required"] == ["prompt"]
    assert props["image_sources"]["type"] == "array"


def test_unknown_node_is_a_coded_error(host: Host) -> None:
    from imagenodes import UnknownNodeError

    with pytest.raises(UnknownNodeError) as info:
        host.run("no_such_node", {})
    assert info.value.code == "UNKNOWN_NODE"
    assert "generate_image_v2" in info.value.message


def test_image_fields_mark_the_sockets_a_builder_wires(host: Host) -> None:
    """Image-ness is not a schema keyword (seed schemas stay exact), so the entry says
    which inputs and outputs are images, singly or as lists."""
    entries = {e["id"]: e for e in host.catalog()}
    assert entries["image_to_image"]["image_fields"] == {
        "inputs": {"source_image": "single"},
        "outputs": {"images": "list"},
    }
    assert entries["image_generation"]["image_fields"]["inputs"] == {"image_sources": "list"}
    assert entries["generate_image_v2"]["image_fields"] == {
        "inputs": {},
        "outputs": {"images": "list"},
    }
    # A third-party pack's output typed ImageRef is a socket too.
    assert entries["checkerboard"]["image_fields"]["outputs"] == {"image": "single"}
    assert entries["create_session"]["image_fields"] == {"inputs": {}, "outputs": {}}
