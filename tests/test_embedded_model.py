"""The embedded default model, judged by pixels through the public API.

These are the acceptance criteria of the shipped model (see its model card): prompt
adherence on the 48 held-out prompts at 64x64 and at every aspect bucket it was
trained on, seed determinism, image-to-image strength, and negative prompts.  They
run in CI on the CPU in about a minute.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenodes import Host, embedded_model_path
from imagenodes.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from shapes import BUCKETS, COLOURS, adherence, heldout_prompts, judge, prompt_for, render

pytestmark = pytest.mark.slow  # every test generates on the embedded model


def image(host: Host, ref: str) -> Image.Image:
    with Image.open(io.BytesIO(host.workspace.read_bytes(ref))) as im:
        return im.convert("RGB")


def generate(host: Host, prompt: str, seed: int, **extra) -> Image.Image:
    inputs = {
        "prompt": prompt,
        "negative_prompt": "",
        "aspect_ratio": "1:1",
        "steps": 20,
        "guidance_scale": 7.5,
        "seed": seed,
        **extra,
    }
    return image(host, host.run("generate_image_v2", inputs).outputs["images"][0])


@pytest.fixture(scope="module")
def host(embedded_host_session: Host) -> Host:
    return embedded_host_session


def test_embedded_model_is_the_zero_config_default_and_small(host: Host) -> None:
    folder = embedded_model_path()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 12 * 1024 * 1024
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    assert (folder / "tokenizer" / "vocab.json").exists()
    assert (folder / "tokenizer" / "merges.txt").exists()
    assert (folder / "README.md").exists()
    result = host.run(
        "generate_image_v2",
        {
            "prompt": "a red circle on a blue background",
            "negative_prompt": "",
            "aspect_ratio": "1:1",
            "seed": 0,
        },
    )
    assert host.engine.status()["loaded"][0]["profile"] == "embedded"
    # Its profile runs it single-threaded on CPU (see docs/performance.md for why).
    record = json.loads(host.workspace.read_bytes(result.run_json))
    assert record["effective"][0]["threads"] == 1
    assert image(host, result.outputs["images"][0]).size == (64, 64)


def test_prompt_adherence_on_the_held_out_prompts(host: Host) -> None:
    prompts = heldout_prompts()
    assert len(prompts) == 48
    verdicts = [
        judge(generate(host, prompt_for(*combo), seed=1000 + index))
        for index, combo in enumerate(prompts)
    ]
    rates = adherence(prompts, verdicts)
    assert rates["background"] >= 0.98, rates
    assert rates["colour"] >= 0.95, rates
    assert rates["shape"] >= 0.92, rates


@pytest.mark.parametrize("bucket", list(BUCKETS))
def test_one_right_shape_at_every_aspect_bucket(host: Host, bucket: str) -> None:
    """Held-out prompts at each training bucket (explicit size, so no resize is involved).

    ``generate_image`` generates an explicit size the model can produce as is, so this
    judges the model at its bucket whatever the engine's size policy for aspect
    ratios; ``one_right`` also demands exactly one shape (a repeated subject fails).
    """
    width, height = BUCKETS[bucket]
    held = heldout_prompts()
    offset = list(BUCKETS).index(bucket) * 12
    combos = [held[(offset + i) % len(held)] for i in range(12)]
    verdicts = []
    for i, combo in enumerate(combos):
        result = host.run(
            "generate_image",
            {
                "prompt": prompt_for(*combo),
                "width": width,
                "height": height,
                "steps": 20,
                "guidance_scale": 7.5,
                "seed": 3000 + offset + i,
            },
        )
        img = image(host, result.outputs["images"][0])
        assert img.size == (width, height)
        verdicts.append(judge(img))
    rates = adherence(combos, verdicts)
    # 11 of 12 (the card's per-bucket eval, 48 prompts each, is the full measurement)
    assert rates["one_right"] >= 11 / 12, (bucket, rates, verdicts)


#: Seed 000's 15 aspect ratios and the sizes its notes document: HD 1024 px and FHD
#: 1920 px on the longest side, the short side in proportion (a multiple of 8); a plain
#: ratio has the model's native long side (64 px here).
def documented_size(ratio: str) -> tuple[int, int]:
    shape, _, tier = ratio.partition("_")
    rw, rh = (int(part) for part in shape.split(":"))
    long_side = {"": 64, "HD": 1024, "FHD": 1920}[tier]
    short = max(8, int(long_side * min(rw, rh) / max(rw, rh) / 8 + 0.5) * 8)
    return (long_side, short) if rw >= rh else (short, long_side)


RATIOS = [f"{r}{t}" for t in ("", "_HD", "_FHD") for r in ("1:1", "3:4", "4:3", "9:16", "16:9")]


def test_one_right_shape_at_all_15_aspect_ratios_through_the_public_api(host: Host) -> None:
    """The issue's bar: held-out prompts at every ratio of seed 000, defaults otherwise
    (20 steps, guidance 7.5, the default size policy), give one shape of the right colour
    on the right background in >= 95 % of the delivered images, each of the documented
    size with at most one size notice naming requested -> generated -> delivered."""
    held = heldout_prompts()
    combos, verdicts, misses = [], [], []
    for r, ratio in enumerate(RATIOS):
        for i in range(3):  # 45 different held-out prompts over the 15 ratios
            # The model card's e2e convention (tools/eval_embedded_model.py --e2e 3):
            # ratio r gets prompts 3r, 3r+1, 3r+2 and seed = prompt index.
            k = r * 3 + i
            result = host.run(
                "generate_image_v2",
                {
                    "prompt": prompt_for(*held[k]),
                    "negative_prompt": "",
                    "aspect_ratio": ratio,
                    "seed": k,
                },
            )
            img = image(host, result.outputs["images"][0])
            assert img.size == documented_size(ratio), ratio
            sized = [n for n in result.notices if n["code"].startswith("SIZE_")]
            assert len(sized) <= 1, sized
            if img.size != (64, 64):
                (notice,) = sized
                assert notice["code"] in ("SIZE_UPSCALED", "SIZE_RESAMPLED")
                delivered = "{}x{}".format(*img.size)
                assert notice["requested"] == delivered, notice
                assert notice["applied"].endswith(f"→ {delivered}"), notice
            verdict = judge(img)
            combos.append(held[k])
            verdicts.append(verdict)
            if (verdict["shape"], verdict["colour"], verdict["background"]) != held[k] or (
                verdict["count"] != 1
            ):
                misses.append((ratio, held[k], verdict))
    rates = adherence(combos, verdicts)
    assert rates["one_right"] >= 0.95, misses


def test_the_readme_seed_default_example_gives_one_right_image(tmp_path: Path) -> None:
    """README: the seed's default ratio (9:16_HD) through the CLI gives the documented
    576x1024 with one notice and one purple triangle on yellow."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(
        r"`\.venv/bin/imagenodes (run generate_image_v2 --set prompt=\"a purple triangle[^`]*)`",
        readme,
    )
    assert match, "README lost its 9:16_HD example"
    argv = shlex.split(match.group(1))
    assert "aspect_ratio" not in match.group(1)  # the seed's default, not set
    out = io.StringIO()
    assert cli_main(["--workspace", str(tmp_path), *argv, "-q"], out=out) == 0
    result = json.loads(out.getvalue())
    assert [n["code"] for n in result["notices"]] == ["SIZE_UPSCALED"]
    (ref,) = result["outputs"]["images"]
    with Image.open(ref.removeprefix("file://")) as im:
        img = im.convert("RGB")
    assert img.size == (576, 1024)
    verdict = judge(img)
    assert (verdict["shape"], verdict["colour"], verdict["background"], verdict["count"]) == (
        "triangle",
        "purple",
        "yellow",
        1,
    ), verdict


def test_same_seed_is_identical_and_different_seeds_differ(host: Host) -> None:
    prompt = "a green square on a white background"
    a = np.asarray(generate(host, prompt, seed=5))
    b = np.asarray(generate(host, prompt, seed=5))
    c = np.asarray(generate(host, prompt, seed=6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_negative_prompt_changes_the_image(host: Host) -> None:
    prompt = "a yellow circle on a black background"
    plain = np.asarray(generate(host, prompt, seed=9), np.float32)
    negative = np.asarray(
        generate(host, prompt, seed=9, negative_prompt="yellow circle"), np.float32
    )
    assert np.abs(plain - negative).mean() > 2.0


def test_image_to_image_strength_and_recolouring(host: Host) -> None:
    from imagenodes.workspace.images import image_to_data_uri

    source = render("square", "red", "blue", np.random.default_rng(3))
    src = np.asarray(source, np.float32)
    uri = image_to_data_uri(source)

    def edit(prompt: str, strength: float, seed: int = 4) -> Image.Image:
        result = host.run(
            "image_to_image",
            {
                "source_image": uri,
                "prompt": prompt,
                "negative_prompt": "",
                "strength": strength,
                "steps": 20,
                "seed": seed,
            },
        )
        return image(host, result.outputs["images"][0])

    own = prompt_for("square", "red", "blue")
    # Averaged over seeds: at low strength the VAE round trip itself dominates the
    # distance, so one seed's noise can swap two close strengths.
    distances = [
        np.mean(
            [np.abs(np.asarray(edit(own, s, seed), np.float32) - src).mean() for seed in (4, 5, 6)]
        )
        for s in (0.1, 0.4, 0.8)
    ]
    assert distances[0] < distances[1] < distances[2], distances
    recoloured = judge(edit(prompt_for("square", "yellow", "green"), 0.8))
    assert (recoloured["colour"], recoloured["background"]) == ("yellow", "green")
    assert set(COLOURS) == {
        "red",
        "green",
        "blue",
        "yellow",
        "white",
        "black",
        "orange",
        "purple",
    }
