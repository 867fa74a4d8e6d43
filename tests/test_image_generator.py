"""image_generator (seed 003): batching, per-image seeds, trainings (LoRA scale), packs.

Everything runs the tiny SD model at 64×64 with 2 steps.  The module's host registers
a 2-images-per-call profile for it, so "as few pipeline calls as the batch limit
allows" is visible with a handful of images.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_SD_PROFILE
from PIL import Image

from imagenodes import Host, ImageNodesError, hookimpl
from imagenodes.nodes.image_generator import ImageGenerator
from imagenodes.workspace import read_imagenodes_metadata

BATCH2 = replace(TINY_SD_PROFILE, name="tiny-sd-batch2", max_images_per_call=2, priority=60)
SMALL = {"width": 64, "height": 64, "steps": 2}

pytestmark = pytest.mark.slow  # the module's host runs the tiny SD model


class Batch2Profile:
    @hookimpl
    def register_model_profiles(self, register: Callable[[Any], None]) -> None:
        register(BATCH2)


def build_lora(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """A diffusers-format LoRA for the tiny UNet, made with peft (random, non-zero B)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers)
    return out_dir


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host], tiny_sd: Path) -> Host:
    return make_host(
        tiny_sd,
        tiny_profile=True,
        plugins=[Batch2Profile()],
        connections={"default": {"models_dir": str(tiny_sd.parent)}},
    )


@pytest.fixture(scope="module")
def trainings(host: Host, tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("loras")
    ids = []
    for seed in (0, 1):
        tid = str(uuid.uuid4())
        lora = build_lora(tiny_sd, root / f"lora{seed}", seed)
        host.trainings.add(tid, lora, base_model=str(tiny_sd))
        ids.append(tid)
    return ids


def pixels(host: Host, ref: str) -> np.ndarray:
    with Image.open(io.BytesIO(host.workspace.read_bytes(ref))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_schema_carries_the_seed_defaults_and_limits(host: Host) -> None:
    entry = next(e for e in host.catalog() if e["id"] == "image_generator")
    schema = entry["input_schema"]
    assert set(schema["properties"]) == {"images", "trainingId", "baseModel", "inferencePackId"}
    image = schema["$defs"]["ImageRequest"]["properties"]
    assert image["steps"]["default"] == 25 and image["steps"]["maximum"] == 60
    assert (image["width"]["minimum"], image["width"]["maximum"]) == (8, 2048)
    assert image["width"]["default"] == 1024 and image["width"]["multipleOf"] == 8
    assert image["scale"] == {**image["scale"], "default": 0.9, "minimum": 0, "maximum": 1}
    assert image["guidanceScale"]["default"] == 7.5 and image["guidanceScale"]["maximum"] == 10
    assert image["batchSize"]["maximum"] == 4
    assert (
        image["precision"]["enum"] == ["fp16", "bf16"] and image["precision"]["default"] == "fp16"
    )
    assert schema["$defs"]["ImageRequest"]["required"] == ["prompt"]


def test_requests_are_grouped_and_batched_with_per_image_seeds(host: Host) -> None:
    images = [
        {"prompt": "a red circle", "seed": 1, "batchSize": 2, **SMALL},
        {"prompt": "a blue square", "seed": 5, "negativePrompt": "blurry", **SMALL},
        {"prompt": "a green star", "seed": 9, **SMALL},
        {"prompt": "a wide one", "seed": 3, **SMALL, "width": 32},  # another group
    ]
    result = host.run("image_generator", {"images": images})
    out = result.outputs
    # Group 1 holds 4 images → 2 calls at 2 per call; group 2 → 1 call.
    assert out["groups"] == 2 and out["pipelineCalls"] == 3 and result.pipeline_calls == 3
    assert [r["seeds"] for r in out["requests"]] == [[1, 2], [5], [9], [3]]
    assert [len(r["images"]) for r in out["requests"]] == [2, 1, 1, 1]
    assert out["images"] == [ref for r in out["requests"] for ref in r["images"]]
    assert [(r["width"], r["height"]) for r in out["requests"]][-1] == (32, 64)
    meta = read_imagenodes_metadata(host.workspace.read_bytes(out["requests"][1]["images"][0]))
    assert meta["prompt"] == "a blue square" and meta["negative_prompt"] == "blurry"
    assert meta["seed"] == 5 and meta["request"] == "images[1]"

    # Batching does not change a picture: request 2 alone, same seed, same image
    # (up to float rounding between batch shapes).
    alone = host.run("image_generator", {"images": [images[2]]})
    assert alone.outputs["pipelineCalls"] == 1
    diff = np.abs(
        pixels(host, alone.outputs["images"][0]) - pixels(host, out["requests"][2]["images"][0])
    )
    assert diff.mean() < 1.0 and diff.max() <= 3


def test_training_scale_zero_is_the_base_model_and_scale_applies_the_adapter(
    host: Host, trainings: list[str]
) -> None:
    first, second = trainings
    prompt = {"prompt": "a yellow triangle", "seed": 3, **SMALL}
    base = host.run("image_generator", {"images": [prompt]})
    result = host.run(
        "image_generator",
        {
            "trainingId": first,  # global: applies to every image without its own
            "images": [
                {**prompt, "scale": 0.0},
                {**prompt, "scale": 0.9},
                {**prompt, "scale": 0.9, "trainingId": second},  # overrides the global
            ],
        },
    )
    reqs = result.outputs["requests"]
    assert [r["trainingId"] for r in reqs] == [first, first, second]
    assert [r["scale"] for r in reqs] == [0.0, 0.9, 0.9]
    assert result.outputs["groups"] == 3  # training and scale are part of the key
    base_px = pixels(host, base.outputs["images"][0])
    zero, nine, other = (pixels(host, r["images"][0]) for r in reqs)
    assert np.array_equal(zero, base_px)  # scale 0 == the base model, exactly
    assert np.abs(nine - base_px).mean() > 0.5  # the adapter changes the image
    assert np.abs(other - nine).mean() > 0.5  # and the override used another adapter
    meta = read_imagenodes_metadata(host.workspace.read_bytes(reqs[1]["images"][0]))
    assert meta["training_id"] == first and meta["scale"] == 0.9
    # The training's base model was used (no baseModel given), so no mismatch notice.
    assert not [n for n in result.notices if n["code"] == "TRAINING_BASE_MODEL"]


def test_pack_requests_run_first_then_the_extra_images(host: Host, tiny_sd: Path) -> None:
    pack = host.packs.create(
        [
            {"prompt": "pack one", "seed": 11, **SMALL},
            {"prompt": "pack two", "seed": 12, "batchSize": 2, **SMALL},
        ],
        name="reference prompts",
    )
    result = host.run(
        "image_generator",
        {
            "inferencePackId": pack["id"],
            # Global model (a folder under models_dir), applies to the pack's requests too.
            "baseModel": tiny_sd.name,
            "images": [{"prompt": "extra", "seed": 13, **SMALL}],
        },
    )
    reqs = result.outputs["requests"]
    assert [(r["source"], r["index"], r["prompt"]) for r in reqs] == [
        ("pack", 0, "pack one"),
        ("pack", 1, "pack two"),
        ("images", 0, "extra"),
    ]
    assert all(r["model"] == tiny_sd.name for r in reqs)
    assert len(result.outputs["images"]) == 4
    assert result.outputs["groups"] == 1 and result.outputs["pipelineCalls"] == 2


def test_default_size_is_drawn_at_the_models_size_and_upscaled(host: Host) -> None:
    result = host.run("image_generator", {"images": [{"prompt": "big", "steps": 2, "seed": 1}]})
    req = result.outputs["requests"][0]
    assert (req["width"], req["height"]) == (1024, 1024)  # delivered as asked
    (notice,) = [n for n in result.notices if n["code"].startswith("SIZE_")]
    assert (notice["code"], notice["applied"]) == ("SIZE_UPSCALED", "64x64 → 1024x1024")


@pytest.mark.parametrize(
    ("inputs", "code", "field"),
    [
        ({"images": []}, "INVALID_INPUT", "images"),
        ({"images": [{"prompt": "x", "width": 100}]}, "INVALID_DIMENSIONS", "images.0.width"),
        ({"images": [{"prompt": "x", "width": 2056}]}, "INVALID_DIMENSIONS", "images.0.width"),
        ({"images": [{"prompt": "x", "height": 0}]}, "INVALID_DIMENSIONS", "images.0.height"),
        ({"images": [{"prompt": "x", "steps": 0}]}, "INVALID_STEPS", "images.0.steps"),
        (
            {"images": [{"prompt": "x", "guidanceScale": 10.5}]},
            "INVALID_GUIDANCE_SCALE",
            "images.0.guidanceScale",
        ),
        (
            {"images": [{"prompt": "x", "batchSize": 5}]},
            "BATCH_SIZE_EXCEEDED",
            "images.0.batchSize",
        ),
        ({"images": [{"prompt": "x", "scale": 1.5}]}, "INVALID_INPUT", "images.0.scale"),
        ({"images": [{"prompt": "x", "seed": -1}]}, "INVALID_INPUT", "images.0.seed"),
        ({"images": [{"prompt": "   "}]}, "EMPTY_PROMPT", "images.0.prompt"),
        ({"images": [{"steps": 2}]}, "EMPTY_PROMPT", "images.0.prompt"),
        (
            {"images": [{"prompt": "x"}] * 101},
            "BATCH_SIZE_EXCEEDED",
            "images",
        ),
        (
            {"images": [{"prompt": "x", "baseModel": "/no/such/model"}]},
            "CONNECTION_ERROR",
            "images.0.baseModel",
        ),
    ],
)
def test_bad_requests_are_coded_errors_and_store_nothing(
    host: Host, inputs: dict, code: str, field: str
) -> None:
    before = sorted(Path(host.workspace.root).rglob("*"))
    with pytest.raises(ImageNodesError) as info:
        host.run("image_generator", inputs)
    assert (info.value.code, info.value.field) == (code, field)
    assert sorted(Path(host.workspace.root).rglob("*")) == before
    if code == "INVALID_DIMENSIONS":
        assert "8" in info.value.message and "2048" in info.value.message
    if code in ImageGenerator.solutions:  # seed 003's ranges, not seed 000's
        assert info.value.solution == ImageGenerator.solutions[code]
