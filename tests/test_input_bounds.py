"""Bounded inputs: text length caps, the prompt window, source count and decode size.

Issue #14 §3: a 1 MB negative prompt used to make a 2 MB PNG and run.json; a prompt
past CLIP's window made transformers print the dropped text to stderr; each
7000x7000 source added ~187 MB to a run's peak memory.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagenodes import Host, ImageNodesError
from imagenodes.sdk import MAX_PROMPT_CHARS, MAX_TEXT_CHARS
from imagenodes.workspace import decode_image, image_to_data_uri

V2 = {"prompt": "a red circle on a blue background", "negative_prompt": "", "aspect_ratio": "1:1"}
I2I = {"prompt": V2["prompt"], "negative_prompt": ""}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    return Host(tmp_path_factory.mktemp("bounds-ws"))


def _refused(host: Host, node: str, inputs: dict) -> ImageNodesError:
    with pytest.raises(ImageNodesError) as err:
        host.validate(node, inputs)
    return err.value


@pytest.mark.parametrize(
    ("node", "inputs", "field"),
    [
        ("generate_image_v2", {**V2, "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
        ("generate_image_v2", {**V2, "negative_prompt": "n" * 1_000_000}, "negative_prompt"),
        ("image_to_image", {**I2I, "source_image": "a.png", "prompt_2": "y" * 3000}, "prompt_2"),
        ("image_generation", {"prompt": "p" * 5000}, "prompt"),
        (
            "image_generator",
            {"images": [{"prompt": "a"}, {"prompt": "b", "negativePrompt": "n" * 2001}]},
            "images.1.negativePrompt",
        ),
        ("generate_image", {"prompt": "z" * 2001}, "prompt"),
    ],
)
def test_prompts_past_the_cap_are_refused_naming_field_and_limit(
    host: Host, node: str, inputs: dict, field: str
) -> None:
    err = _refused(host, node, inputs)
    assert (err.code, err.field) == ("INVALID_INPUT", field)
    assert f"at most {MAX_PROMPT_CHARS} characters" in err.message
    assert len(err.message) < 300  # the text itself is not echoed back


def test_a_prompt_at_the_cap_is_accepted(host: Host) -> None:
    long = ("word " * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    assert host.validate("generate_image_v2", {**V2, "prompt": long}).prompt == long


def test_every_other_string_has_the_host_backstop(host: Host) -> None:
    """A field with no cap of its own (a session name here; any pack's) is refused
    past MAX_TEXT_CHARS by the host."""
    err = _refused(host, "create_session", {"name": "n" * (MAX_TEXT_CHARS + 1)})
    assert (err.code, err.field) == ("INVALID_INPUT", "name")
    assert f"at most {MAX_TEXT_CHARS} characters" in err.message
    assert host.validate("create_session", {"name": "n" * MAX_TEXT_CHARS})


def test_image_inputs_are_exempt_from_the_text_backstop(host: Host) -> None:
    noisy = Image.effect_noise((256, 256), 64).convert("RGB")
    uri = image_to_data_uri(noisy)
    assert len(uri) > MAX_TEXT_CHARS
    inputs = {**I2I, "source_image": uri}
    assert host.validate("image_to_image", inputs).source_image == uri


def test_the_number_of_sources_is_bounded_in_the_schema(host: Host) -> None:
    schema = host.catalog_entry("image_generation")["input_schema"]
    assert schema["properties"]["image_sources"]["maxItems"] == 8
    err = _refused(host, "image_generation", {"prompt": "a", "image_sources": ["a.png"] * 9})
    assert (err.code, err.field) == ("SOURCE_IMAGE_ERROR", "image_sources")
    assert "at most 8 items (got 9 items)" in err.message


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_large_source_is_shrunk_as_it_is_decoded(fmt: str) -> None:
    image = Image.new("RGB", (4000, 3000), (10, 120, 240))
    image.paste((250, 250, 0), (0, 0, 2000, 3000))  # left half yellow
    out = decode_image(_encoded(image, fmt), max_side=1024)
    assert out.size == (1024, 768) and out.mode == "RGB"
    assert out.info["source_size"] == (4000, 3000)
    left, right = out.getpixel((100, 384)), out.getpixel((900, 384))
    assert all(abs(a - b) <= 6 for a, b in zip(left, (250, 250, 0), strict=True))
    assert all(abs(a - b) <= 6 for a, b in zip(right, (10, 120, 240), strict=True))
    # Without a bound nothing is shrunk (uploads keep their pixels).
    assert decode_image(_encoded(image, fmt)).size == (4000, 3000)


def test_shrinking_keeps_orientation_palette_and_16_bit_values() -> None:
    rotated = Image.new("RGB", (3000, 1000), (200, 0, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: stands 1000x3000
    out = decode_image(_encoded(rotated, "JPEG", exif=exif.tobytes()), max_side=600)
    assert out.size == (200, 600) and out.info["source_size"] == (1000, 3000)

    palette = Image.new("P", (2000, 2000), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    out = decode_image(_encoded(palette, "PNG"), max_side=500)
    assert out.size == (500, 500) and out.getpixel((250, 250)) == (0, 200, 0)

    grey16 = Image.new("I;16", (2000, 1000), 32768)
    out = decode_image(_encoded(grey16, "PNG"), max_side=400)
    assert out.size == (400, 200) and out.getpixel((10, 10)) == (128, 128, 128)


_PEAK = """
import json, resource, shutil, sys
from pathlib import Path
from PIL import Image
ws, n = Path(sys.argv[1]), int(sys.argv[2])
from imagenodes import Host
host = Host(ws)
host.run("image_generation", {"prompt": "warm-up", "num_images": 1, "seed": 1})
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = host.run("image_generation", {
    "prompt": "a circle", "image_sources": [f"big{i}.png" for i in range(n)],
    "seed": 1, "use_cache": False, "strength": 0.5})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"start_mb": start / 1024, "peak_mb": peak / 1024,
                  "notices": [x["code"] for x in result.notices]}))
"""


@pytest.mark.slow
def test_peak_memory_barely_grows_with_the_number_of_large_sources(tmp_path: Path) -> None:
    """7000x7000 PNGs (0.14 MB on disk, 196 MB decoded): each source used to add
    ~187 MB to the peak; now each is shrunk to 2048 px as it is decoded (~17 MB)."""
    big = Image.new("RGB", (7000, 7000), (200, 30, 30))
    big.paste((20, 200, 20), (1000, 1000, 6000, 6000))
    big.save(tmp_path / "big0.png")
    for i in range(1, 4):
        (tmp_path / f"big{i}.png").write_bytes((tmp_path / "big0.png").read_bytes())
    peaks = {}
    for n in (1, 4):
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(tmp_path), str(n)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert "IMAGES_BLENDED" in peaks[4]["notices"]
    growth = peaks[4]["peak_mb"] - peaks[1]["peak_mb"]
    assert growth < 3 * 40, f"three more sources added {growth:.0f} MB to the peak"
    # One 7000x7000 decode costs one full-size image, not three copies of it.
    assert peaks[1]["peak_mb"] - peaks[1]["start_mb"] < 400


@pytest.mark.slow
def test_a_prompt_past_the_window_is_cut_with_one_notice_and_no_warning(
    host: Host, capfd: pytest.CaptureFixture[str]
) -> None:
    words = " ".join(f"detail{i}" for i in range(150))
    result = host.run(
        "generate_image_v2",
        {**V2, "prompt": f"{V2['prompt']} {words}", "steps": 2, "batch_size": 2, "seed": 3},
    )
    captured = capfd.readouterr()
    assert "truncated" not in captured.err.lower() and "sequence length" not in captured.err
    notices = [n for n in result.notices if n["code"] == "PROMPT_TRUNCATED"]
    assert [n["field"] for n in notices] == ["prompt"]  # one per prompt, not per image
    requested = int(notices[0]["requested"].split()[0])
    kept = int(notices[0]["applied"].split()[0])
    assert requested > 300 and 0 < kept <= 30  # the embedded model's CLIP reads 32 tokens
    run = json.loads((Path(host.workspace.root) / "runs" / result.run_id / "run.json").read_text())
    used = run["effective"][0]["prompt"] if "effective" in run else run["params"]["prompt"]
    assert V2["prompt"] in used and "detail149" not in used


@pytest.mark.slow
def test_a_size_from_a_shrunk_source_is_the_original_size(host: Host) -> None:
    """image_to_image sizes its output from the source: a 3000x1500 source is decoded
    at 2048 px, but the notice still says what was asked (the original size)."""
    source = image_to_data_uri(Image.new("RGB", (3000, 1500), (0, 90, 200)), fmt="JPEG")
    result = host.run(
        "image_to_image",
        {**I2I, "source_image": source, "steps": 2, "strength": 0.5, "seed": 1},
    )
    (notice,) = [n for n in result.notices if n["code"].startswith("SIZE_")]
    assert (notice["code"], notice["requested"]) == ("SIZE_UPSCALED", "3000x1500")
    assert result.effective[0]["size"]["delivered"] == "3000x1504"  # a multiple of 8
