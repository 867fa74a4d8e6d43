"""Routing on real tiny pipelines of every built-in family, with reported adaptations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenodes import ConnectionConfigError, Host
from imagenodes.engine.aspect import ASPECT_RATIOS, aspect_markdown, aspect_table, nominal_size
from imagenodes.engine.profiles import EMBEDDED, FLUX, SD, SDXL
from imagenodes.registry.runner import runtime_config
from tests.helpers import load_ref

SOURCE_COLOUR = (200, 30, 30)


@pytest.fixture(scope="module")
def source_ref() -> str:
    """A data URI: accepted by every host whatever its workspace."""
    from imagenodes.workspace.images import image_to_data_uri

    return image_to_data_uri(Image.new("RGB", (64, 64), SOURCE_COLOUR))


def i2i(host: Host, source: str, **extra) -> dict:
    inputs = {
        "source_image": source,
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "steps": 2,
        "seed": 1,
        "width": 64,
        "height": 64,
        "strength": 0.9,
        **extra,
    }
    return host.run("image_to_image", inputs).to_dict()


def codes(result: dict) -> dict[str, dict]:
    return {f"{n['code']}:{n['field']}": n for n in result["notices"]}


def test_sd_ignores_prompt_2_with_a_notice(make_host, tiny_models, source_ref) -> None:
    host = make_host(tiny_models("sd"))
    result = i2i(host, source_ref, prompt_2="a second prompt", image_guidance_scale=3)
    notes = codes(result)
    assert notes["PARAMETER_IGNORED:prompt_2"]["requested"] == "a second prompt"
    assert "PARAMETER_IGNORED:image_guidance_scale" in notes
    assert host.engine.status()["loaded"][0]["profile"] == "sd"
    assert host.engine.status()["loaded"][0]["tasks"] == ["image-to-image", "text-to-image"]


def test_sdxl_uses_prompt_2(make_host, tiny_models, source_ref) -> None:
    host = make_host(tiny_models("sdxl"))
    a = i2i(host, source_ref, prompt_2="red")
    b = i2i(host, source_ref, prompt_2="green")
    assert not [n for n in a["notices"] if n["field"] == "prompt_2"]
    assert host.engine.status()["loaded"][0]["profile"] == "sdxl"
    pa = np.asarray(load_ref(host, a["outputs"]["images"][0]), np.float32)
    pb = np.asarray(load_ref(host, b["outputs"]["images"][0]), np.float32)
    assert np.abs(pa - pb).mean() > 0  # the second text encoder really is used


def test_instruct_pix2pix_routes_to_an_edit_with_image_guidance(
    make_host, tiny_models, source_ref
) -> None:
    host = make_host(tiny_models("instruct-pix2pix"))
    a = i2i(host, source_ref, image_guidance_scale=1.0)
    b = i2i(host, source_ref, image_guidance_scale=5.0)
    notes = codes(a)
    assert notes["TASK_ROUTED:task"]["applied"] == "instruction-edit"
    assert "PARAMETER_IGNORED:strength" in notes
    assert "PARAMETER_IGNORED:image_guidance_scale" not in notes
    pa = np.asarray(load_ref(host, a["outputs"]["images"][0]), np.float32)
    pb = np.asarray(load_ref(host, b["outputs"]["images"][0]), np.float32)
    assert np.abs(pa - pb).mean() > 0
    with pytest.raises(Exception) as info:  # an edit model cannot start from text
        host.run(
            "generate_image_v2",
            {"prompt": "x", "negative_prompt": "", "steps": 1, "aspect_ratio": "1:1"},
        )
    assert info.value.code == "GENERATION_FAILED" and "text-to-image" in info.value.message


def test_flux_drops_negative_prompt_and_rounds_to_16(make_host, tiny_models, source_ref) -> None:
    host = make_host(tiny_models("flux"))
    result = i2i(host, source_ref, width=72, height=64)
    notes = codes(result)
    assert notes["PARAMETER_IGNORED:negative_prompt"]["requested"] == "blurry"
    # FLUX generates in multiples of 16; the image is resized back to the request.
    assert notes["SIZE_RESAMPLED:width/height"]["applied"] == "80x64 → 72x64"
    assert load_ref(host, result["outputs"]["images"][0]).size == (72, 64)


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_turbo_clamps_guidance_and_steps(make_host, tiny_models, source_ref, family) -> None:
    host = make_host(tiny_models(family))
    result = i2i(host, source_ref, steps=30, guidance_scale=7.5)
    notes = codes(result)
    assert notes["STEPS_CLAMPED:steps"]["applied"] == 4
    assert notes["GUIDANCE_CLAMPED:guidance_scale"]["applied"] == 0.0
    assert host.engine.status()["loaded"][0]["profile"] == family


def test_unprofiled_class_routes_through_autopipeline(tiny_models, tmp_path) -> None:
    folder = tmp_path / "lcm-model"
    shutil.copytree(tiny_models("sd"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "LatentConsistencyModelPipeline"
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    cfg["_class_name"] = "LCMScheduler"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    resolved = Host(tmp_path / "ws", connections={"default": {"model": str(folder)}}).engine.route(
        runtime_config(
            Host(tmp_path / "w2")
            .connections.get("default")
            .model_copy(update={"model": str(folder)})
        )
    )
    assert resolved.profile.name == "auto:LatentConsistencyModelPipeline"
    assert resolved.profile.pipelines["text-to-image"] == "LatentConsistencyModelPipeline"


def test_unroutable_model_names_the_class(make_host, tiny_models, tmp_path) -> None:
    folder = tmp_path / "weird"
    shutil.copytree(tiny_models("sd"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "MyVideoPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    host = make_host(folder)
    with pytest.raises(ConnectionConfigError) as info:
        host.run("generate_image_v2", {"prompt": "x", "negative_prompt": "", "steps": 1})
    assert "MyVideoPipeline" in info.value.message and info.value.field == "model"


@pytest.mark.slow  # the runs reach the engine (and import torch) before the check
def test_missing_model_and_offline_hub_id_are_connection_errors(tmp_path) -> None:
    for model in (str(tmp_path / "nope"), "some-org/not-cached-model"):
        host = Host(tmp_path / "ws", connections={"default": {"model": model}})
        with pytest.raises(ConnectionConfigError) as info:
            host.run("generate_image_v2", {"prompt": "x", "negative_prompt": ""})
        assert model in info.value.message


def test_models_dir_resolves_hub_ids_to_local_copies(tiny_models, tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models("sdxl"), models / "stabilityai" / "stable-diffusion-xl-base-1.0")
    host = Host(tmp_path / "ws", connections={"default": {"models_dir": str(models)}})
    conn = runtime_config(host.connections.get("default"))
    resolved = host.engine.route(conn, "sdxl")  # the preset name of the family
    assert resolved.profile.name == "sdxl" and resolved.class_name == "StableDiffusionXLPipeline"
    assert Path(resolved.source) == models / "stabilityai" / "stable-diffusion-xl-base-1.0"
    by_id = host.engine.route(conn, "stabilityai/stable-diffusion-xl-base-1.0")
    assert (by_id.source, by_id.profile) == (resolved.source, resolved.profile)


# -- the aspect-ratio table ----------------------------------------------------------
@pytest.mark.parametrize(
    ("aspect", "profile", "size"),
    [
        ("1:1", SD, (512, 512)),
        ("16:9", SD, (512, 288)),
        ("9:16", SD, (288, 512)),
        ("3:4", SD, (384, 512)),
        ("4:3_HD", SD, (1024, 768)),
        ("16:9_HD", SDXL, (1024, 576)),
        ("9:16_FHD", SDXL, (1080, 1920)),
        ("16:9_FHD", FLUX, (1920, 1088)),
        ("1:1", EMBEDDED, (64, 64)),
        ("16:9", EMBEDDED, (64, 40)),
    ],
)
def test_aspect_table(aspect, profile, size) -> None:
    assert nominal_size(aspect, profile) == size


def test_aspect_table_is_documented_for_both_policies() -> None:
    rows = {r["aspect_ratio"]: r for r in aspect_table(EMBEDDED)}
    assert set(rows) == set(ASPECT_RATIOS) and len(rows) == 15
    nine = rows["9:16_HD"]
    assert (nine["delivered"], nine["generated"], nine["cap"]) == ("576x1024", "48x88", "144x256")
    assert nine["capped"]
    assert rows["16:9_FHD"]["delivered"] == "1920x1080"
    docs = (Path(__file__).parents[1] / "docs" / "routing.md").read_text()
    for profile in (SD, SDXL, FLUX, EMBEDDED):
        assert aspect_markdown(profile) in docs, profile.name
