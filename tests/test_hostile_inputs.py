"""Values a schema accepts never end as GENERATION_FAILED; junk gets an input code."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError
from imagenodes.workspace import image_to_data_uri

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
