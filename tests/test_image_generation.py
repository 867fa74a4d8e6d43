"""image_generation (seed 002): routing by model choice, guardrails, blending, caching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagenodes import Host, InputError
from imagenodes.workspace.images import image_to_data_uri
from tests.helpers import load_ref, workspace_files

pytestmark = pytest.mark.slow  # every test runs on the tiny SD model


def codes(result) -> dict[str, dict]:
    return {n["code"]: n for n in result.notices}


def test_text_to_image_with_guardrails(tiny_host: Host) -> None:
    result = tiny_host.run(
        "image_generation",
        {"prompt": "a red circle", "seed": 3, "aspect_ratio": "21:9", "num_images": 9},
    )
    notes = codes(result)
    assert notes["ASPECT_RATIO_FALLBACK"]["requested"] == "21:9"
    assert notes["ASPECT_RATIO_FALLBACK"]["applied"] == "1:1"
    assert notes["IMAGE_COUNT_CLAMPED"]["applied"] == 4  # the tiny profile's per-call limit
    assert len(result.outputs["images"]) == 4 and result.outputs["cached"] is False
    assert load_ref(tiny_host, result.outputs["images"][0]).size == (64, 64)
    assert result.effective[0]["task"] == "text-to-image"


def test_zero_images_is_clamped_up_and_large_sizes_upscaled(tiny_host: Host) -> None:
    result = tiny_host.run(
        "image_generation",
        {"prompt": "x", "seed": 1, "num_images": 0, "image_size": "2K", "aspect_ratio": "16:9"},
    )
    notes = codes(result)
    assert notes["IMAGE_COUNT_CLAMPED"]["applied"] == 1
    # 2K is delivered; the tiny model draws it at its 64² budget in the 16:9 shape.
    assert notes["SIZE_UPSCALED"]["applied"] == "88x48 → 2048x1152"
    assert load_ref(tiny_host, result.outputs["images"][0]).size == (2048, 1152)


def test_one_source_is_image_to_image_and_several_are_blended(tiny_host: Host) -> None:
    red = image_to_data_uri(Image.new("RGB", (64, 64), (255, 0, 0)))
    blue = image_to_data_uri(Image.new("RGB", (64, 64), (0, 0, 255)))
    one = tiny_host.run("image_generation", {"prompt": "x", "seed": 1, "image_sources": [red]})
    assert one.effective[0]["task"] == "image-to-image" and "IMAGES_BLENDED" not in codes(one)
    two = tiny_host.run(
        "image_generation", {"prompt": "x", "seed": 1, "image_sources": [red, blue]}
    )
    assert codes(two)["IMAGES_BLENDED"]["requested"] == 2
    a = np.asarray(load_ref(tiny_host, one.outputs["images"][0]), np.float32)
    b = np.asarray(load_ref(tiny_host, two.outputs["images"][0]), np.float32)
    assert np.abs(a - b).mean() > 0  # the init image differs; pixels judged on the embedded model


def test_identical_seeded_request_returns_the_stored_result(tiny_host: Host) -> None:
    request = {"prompt": "a blue square", "seed": 11, "num_images": 2}
    first = tiny_host.run("image_generation", request)
    files = workspace_files(tiny_host)
    again = tiny_host.run("image_generation", request)
    assert again.outputs == {"images": first.outputs["images"], "cached": True}
    assert "CACHED_RESULT" in codes(again) and again.seeds == [11, 12]
    assert workspace_files(tiny_host) == files  # nothing generated, nothing written
    fresh = tiny_host.run("image_generation", {**request, "use_cache": False})
    assert fresh.outputs["images"] != first.outputs["images"]
    assert fresh.outputs["cached"] is False


def test_unknown_model_choice_names_the_choices(tiny_host: Host) -> None:
    with pytest.raises(InputError) as info:
        tiny_host.run("image_generation", {"prompt": "x", "model": "dall-e"})
    assert info.value.field == "model" and "embedded" in info.value.message
    assert workspace_files(tiny_host) == []


def test_bad_source_is_source_image_error_naming_the_item(tiny_host: Host) -> None:
    with pytest.raises(Exception) as info:
        tiny_host.run("image_generation", {"prompt": "x", "image_sources": ["../../etc/passwd"]})
    assert info.value.code == "SOURCE_IMAGE_ERROR" and info.value.field == "image_sources.0"
    assert workspace_files(tiny_host) == []
