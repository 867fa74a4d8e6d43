"""Size policies (issue #16): generate at the model's own size, deliver the documented one.

Real tiny random-weight SD and SDXL pipelines, each under a test profile with small
buckets (so a bucket is cheap on CPU): what is generated, what is delivered, the one
notice, and the records (PNG metadata, run.json).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagenodes import Host, hookimpl
from imagenodes.engine.aspect import plan_size
from imagenodes.engine.profiles import EMBEDDED, SD, SDXL, ModelProfile
from imagenodes.workspace import read_imagenodes_metadata

SMALL_BUCKETS = ((64, 64), (56, 72), (72, 56), (48, 88), (88, 48))
PROFILES = {
    "sd": ModelProfile(
        name="sizes-sd",
        title="Tiny SD (size tests)",
        pipelines=SD.pipelines,
        native_resolution=64,
        max_resolution=128,
        pixel_budget=64 * 64,  # no buckets: the budget in the request's shape
    ),
    "sdxl": ModelProfile(
        name="sizes-sdxl",
        title="Tiny SDXL (size tests)",
        pipelines=SDXL.pipelines,
        native_resolution=64,
        max_resolution=128,
        buckets=SMALL_BUCKETS,
        supports=SDXL.supports,
    ),
}


class SizeProfiles:
    @hookimpl
    def register_model_profiles(self, register: Callable[[Any], None]) -> None:
        for profile in PROFILES.values():
            register(profile)


V2 = {"prompt": "a red circle", "negative_prompt": "", "steps": 2, "seed": 5}


def _host(make_host: Callable[..., Host], model: Path, family: str, **conn: Any) -> Host:
    return make_host(
        model,
        plugins=[SizeProfiles()],
        connections={"default": {"profile": PROFILES[family].name, **conn}},
    )


def _image(host: Host, ref: str) -> tuple[Image.Image, dict[str, Any]]:
    data = host.workspace.read_bytes(ref)
    return Image.open(io.BytesIO(data)), read_imagenodes_metadata(data)


def _size_notices(result: Any) -> list[dict[str, Any]]:
    return [n for n in result.notices if n["code"].startswith("SIZE_")]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_upscale_delivers_the_seed_size_from_the_models_own_size(
    make_host: Callable[..., Host], tiny_models: Callable[[str], Path], family: str
) -> None:
    host = _host(make_host, tiny_models(family), family)
    result = host.run("generate_image_v2", {**V2, "aspect_ratio": "9:16_HD"})
    generated = "48x88"  # sdxl: its 9:16 bucket; sd: its 64² budget in the 9:16 shape
    image, meta = _image(host, result.outputs["images"][0])
    assert image.size == (576, 1024)  # the seed's 9:16_HD, on every family
    (note,) = _size_notices(result)
    assert note["code"] == "SIZE_UPSCALED" and note["field"] == "aspect_ratio"
    assert (note["requested"], note["applied"]) == ("576x1024", f"{generated} → 576x1024")
    expected = {"generated": generated, "delivered": "576x1024", "method": "lanczos"}
    assert {k: meta["size"][k] for k in expected} == expected
    run = json.loads(host.workspace.read_bytes(f"runs/{result.run_id}/run.json"))
    assert run["effective"][0]["size"]["delivered"] == "576x1024"
    assert run["effective"][0]["width"] == int(generated.split("x")[0])


@pytest.mark.slow
def test_fhd_and_plain_ratios_deliver_the_documented_sizes(
    make_host: Callable[..., Host], tiny_models: Callable[[str], Path]
) -> None:
    host = _host(make_host, tiny_models("sdxl"), "sdxl")
    for ratio, size, notice in (
        ("16:9_FHD", (1920, 1080), "SIZE_UPSCALED"),
        ("1:1", (64, 64), None),  # the bucket itself: nothing to say
        ("3:4", (48, 64), "SIZE_RESAMPLED"),  # native long side 64, from the 56x72 bucket
    ):
        result = host.run("generate_image_v2", {**V2, "aspect_ratio": ratio})
        image, _ = _image(host, result.outputs["images"][0])
        assert image.size == size, ratio
        assert [n["code"] for n in _size_notices(result)] == ([notice] if notice else []), ratio


@pytest.mark.slow
def test_cap_keeps_the_old_behaviour_and_native_ignores_the_tier(
    make_host: Callable[..., Host], tiny_models: Callable[[str], Path]
) -> None:
    capped = _host(make_host, tiny_models("sdxl"), "sdxl", size_policy="cap")
    result = capped.run("generate_image_v2", {**V2, "aspect_ratio": "9:16_HD"})
    image, meta = _image(capped, result.outputs["images"][0])
    assert image.size == (72, 128)  # 576x1024 scaled to the 128 px maximum
    assert [(n["code"], n["applied"]) for n in _size_notices(result)] == [("SIZE_CAPPED", "72x128")]
    assert meta["size"]["method"] is None and meta["size"]["policy"] == "cap"

    native = _host(make_host, tiny_models("sdxl"), "sdxl", size_policy="native")
    result = native.run("generate_image_v2", {**V2, "aspect_ratio": "16:9_HD"})
    image, _ = _image(native, result.outputs["images"][0])
    assert image.size == (88, 48)
    assert [(n["code"], n["applied"]) for n in _size_notices(result)] == [("SIZE_NATIVE", "88x48")]


@pytest.mark.slow
def test_hires_refines_the_upscaled_image_with_the_same_weights(
    make_host: Callable[..., Host], tiny_models: Callable[[str], Path]
) -> None:
    plain = _host(make_host, tiny_models("sd"), "sd")
    hires = _host(make_host, tiny_models("sd"), "sd", upscale="hires")
    inputs = {**V2, "aspect_ratio": "4:3_HD"}
    a = plain.run("generate_image_v2", inputs)
    b = hires.run("generate_image_v2", inputs)
    image_a, _ = _image(plain, a.outputs["images"][0])
    image_b, meta = _image(hires, b.outputs["images"][0])
    assert image_a.size == image_b.size == (1024, 768)
    assert image_a.tobytes() != image_b.tobytes()  # a second pass did run
    assert meta["size"]["method"] == "hires" and meta["size"]["hires_strength"] == 0.3
    (note,) = _size_notices(b)
    assert note["code"] == "SIZE_UPSCALED" and "upscale = 'hires'" in note["reason"]
    assert b.timings.get("hires_ms", 0) > 0


@pytest.mark.slow
def test_exact_sizes_above_the_range_are_generated_in_range_and_upscaled(
    make_host: Callable[..., Host], tiny_models: Callable[[str], Path]
) -> None:
    host = _host(make_host, tiny_models("sd"), "sd")
    result = host.run(
        "image_generator",
        {"images": [{"prompt": "a square", "width": 1024, "height": 512, "steps": 2, "seed": 1}]},
    )
    image, meta = _image(host, result.outputs["images"][0])
    assert image.size == (1024, 512)
    (note,) = _size_notices(result)
    assert note["code"] == "SIZE_UPSCALED" and note["applied"] == "88x48 → 1024x512"
    assert meta["size"]["generated"] == "88x48"


# -- the planner alone (torch-free) ------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "policy", "generated", "delivered", "code"),
    [
        ((576, 1024), "upscale", (48, 88), (576, 1024), "SIZE_UPSCALED"),
        ((1920, 1080), "upscale", (88, 48), (1920, 1080), "SIZE_UPSCALED"),
        ((64, 64), "upscale", (64, 64), None, None),
        ((576, 1024), "cap", (144, 256), None, "SIZE_CAPPED"),
        ((576, 1024), "native", (48, 88), None, "SIZE_NATIVE"),
    ],
)
def test_plan_size_on_the_embedded_buckets(
    size: tuple[int, int],
    policy: str,
    generated: tuple[int, int],
    delivered: tuple[int, int] | None,
    code: str | None,
) -> None:
    plan = plan_size(*size, EMBEDDED, policy=policy, field="aspect_ratio", bucketed=True)
    assert (plan.width, plan.height, plan.deliver) == (*generated, delivered)
    assert [n.code for n in plan.notices] == ([code] if code else [])


def test_plan_size_on_real_families_keeps_their_pixel_budget() -> None:
    sd = plan_size(576, 1024, SD, bucketed=True)  # SD 1.x: ~512² in the 9:16 shape
    assert sd.deliver == (576, 1024) and abs(sd.width * sd.height - 512**2) < 512**2 * 0.05
    small = plan_size(288, 512, SD, bucketed=True)  # within budget: generated as asked
    assert (small.width, small.height, small.deliver, small.notices) == (288, 512, None, [])
    xl = plan_size(1080, 1920, SDXL, bucketed=True)
    assert (xl.width, xl.height, xl.deliver) == (768, 1344, (1080, 1920))
