"""The tiny model builders produce real, loadable diffusers pipelines of every family.

Other tests (and plugin authors) rely on these folders standing in for downloaded
checkpoints, so what is checked here is exactly that contract: the folder loads offline
through ``DiffusionPipeline.from_pretrained``, routes to the right pipeline class via
``model_index.json``, and generates images of the requested size.
"""

from __future__ import annotations

import importlib
import json
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

# torch, diffusers and the builders are imported by the tests, not at collection, so
# that collecting this module (for the torch-free tier too) stays cheap.
pytestmark = pytest.mark.slow

#: Family → the diffusers pipeline class its folder must load as.
EXPECTED_CLASS: dict[str, str] = {
    "sd": "StableDiffusionPipeline",
    "sd-turbo": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-turbo": "StableDiffusionXLPipeline",
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "flux": "FluxPipeline",
}
FAMILIES = tuple(EXPECTED_CLASS)


def diffusers_class(name: str) -> type[DiffusionPipeline]:
    return getattr(importlib.import_module("diffusers"), name)


def test_families_are_every_builder_family() -> None:
    from imagenodes import testing

    assert testing.FAMILIES == FAMILIES
    assert testing.TINY_IMAGE_SIZE == dict.fromkeys(FAMILIES, 64)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run these tiny models on one intra-op thread, then restore the setting.

    The tensors are so small that threading buys nothing, while on a busy 2-core
    machine two OpenMP threads spin-wait on each other: a 2-step generation measured
    0.1 s with one thread and 5-14 s with two while another CPU job was running.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Callable[[str], pathlib.Path]:
    """Build each family at most once for this module, on first use. The folder is named
    after the family because some families (the turbos) are recognised by their path,
    as real model ids are."""
    from imagenodes.testing import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, pathlib.Path] = {}

    def get(family: str) -> pathlib.Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def loaded(tiny_model) -> Callable[[str], DiffusionPipeline]:
    """The tiny folders reloaded the way the engine loads any model: from the path alone."""
    from diffusers import DiffusionPipeline

    pipes: dict[str, DiffusionPipeline] = {}

    def get(family: str) -> DiffusionPipeline:
        if family not in pipes:
            pipe = DiffusionPipeline.from_pretrained(tiny_model(family))
            pipe.set_progress_bar_config(disable=True)
            pipes[family] = pipe
        return pipes[family]

    return get


def _generate(family: str, pipe: DiffusionPipeline, size: int) -> Image.Image:
    import torch

    kwargs: dict = {
        "prompt": "a photo of a cat",
        "num_inference_steps": 2,
        "generator": torch.Generator("cpu").manual_seed(0),
    }
    if family == "instruct-pix2pix":
        # The output takes the size of the image being edited.
        kwargs["image"] = Image.new("RGB", (size, size), "red")
    else:
        kwargs.update(height=size, width=size)
    return pipe(**kwargs).images[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_a_safetensors_pipeline(tiny_model, family: str) -> None:
    path = tiny_model(family)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == EXPECTED_CLASS[family]
    assert list(path.rglob("*.safetensors"))
    assert not list(path.rglob("*.bin"))


@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_offline_and_generates(loaded, family: str) -> None:
    from imagenodes.testing import TINY_IMAGE_SIZE

    pipe = loaded(family)
    assert type(pipe) is diffusers_class(EXPECTED_CLASS[family])
    assert pipe.vae_scale_factor == 8  # like the real models: same size rules
    # Token ids must stay inside the text encoders' embedding tables.
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    if getattr(pipe, "text_encoder_2", None) is not None:
        assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    size = TINY_IMAGE_SIZE[family]
    image = _generate(family, pipe, size)
    assert image.size == (size, size)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.endswith("turbo")])
def test_turbo_schedulers_use_trailing_spacing(loaded, family: str) -> None:
    # Trailing spacing makes a 1-step run start from the last (pure-noise) timestep.
    assert loaded(family).scheduler.config.timestep_spacing == "trailing"


def test_flux_generates_any_multiple_of_16(loaded) -> None:
    import torch

    pipe = loaded("flux")
    # VAE factor 8 × 2×2 patches: a 48×80 request comes back exactly that size.
    image = pipe(
        prompt="a cat",
        height=48,
        width=80,
        num_inference_steps=1,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert image.size == (80, 48)


def test_sd_img2img_from_pipe_shares_components(loaded) -> None:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = loaded("sd")
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert img2img.unet is pipe.unet
    assert img2img.vae is pipe.vae
    image = img2img(
        prompt="a cat",
        image=Image.new("RGB", (64, 64), "blue"),
        strength=0.5,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)


def test_same_seed_same_weights() -> None:
    import torch

    from imagenodes.testing import build_tiny_pipeline

    a = build_tiny_pipeline("sd", seed=3).unet.state_dict()
    b = build_tiny_pipeline("sd", seed=3).unet.state_dict()
    c = build_tiny_pipeline("sd", seed=4).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_clip_tokenizer_layout() -> None:
    from imagenodes.testing import build_tiny_pipeline

    tokenizer = build_tiny_pipeline("sd").tokenizer
    # Real CLIP layout: <|startoftext|>, <|endoftext|> are the two highest ids.
    assert tokenizer.bos_token_id == len(tokenizer) - 2
    assert tokenizer.eos_token_id == len(tokenizer) - 1
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A photo of a squirrel").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "squirrel</w>", "<|endoftext|>",
    ]  # fmt: skip
    # Anything else still tokenizes, byte by byte (CLIP's unk token is <|endoftext|>).
    inner = tokenizer("Zürich 🙂 x9").input_ids[1:-1]
    assert len(inner) == 12  # byte-level pieces of the 9 characters
    assert tokenizer.unk_token_id not in inner


def test_unknown_family_is_rejected(tmp_path) -> None:
    from imagenodes.testing import build_tiny_model

    with pytest.raises(ValueError, match="unknown tiny model family"):
        build_tiny_model("sd3", tmp_path)


def test_sd15_architecture_has_real_sizes() -> None:
    # On the meta device: the module tree and configs, without allocating ~2 GB.
    import torch

    from imagenodes.testing import build_sd15_pipeline

    pipe = build_sd15_pipeline(device="meta")

    def millions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert millions(pipe.unet) == pytest.approx(859.5, abs=1)
    assert millions(pipe.vae) == pytest.approx(83.7, abs=1)
    assert millions(pipe.text_encoder) == pytest.approx(123.1, abs=1)
    assert pipe.unet.dtype == torch.float16
    assert pipe.unet.config.cross_attention_dim == 768
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408
    assert pipe.tokenizer.eos_token_id == 49407


def test_sd15_architecture_with_one_layer_per_block_and_a_given_tokenizer() -> None:
    """The peer benchmark's variant (bench/_peers.build_sd15): half the UNet depth, the
    caller's tokenizer, the same text encoder and VAE."""
    import torch

    from imagenodes.testing import build_sd15_pipeline
    from imagenodes.testing.tiny_models import _clip_tokenizer

    tokenizer = _clip_tokenizer(vocab_size=49408, pad_token="!")
    pipe = build_sd15_pipeline(device="meta", layers_per_block=1, tokenizer=tokenizer)
    assert pipe.tokenizer is tokenizer
    assert pipe.text_encoder.config.pad_token_id == tokenizer.pad_token_id != 49407
    assert [len(b.resnets) for b in pipe.unet.down_blocks] == [1, 1, 1, 1]
    assert sum(p.numel() for p in pipe.unet.parameters()) / 1e6 < 859.5 * 0.7
    assert sum(p.numel() for p in pipe.vae.parameters()) / 1e6 == pytest.approx(83.7, abs=1)
    assert pipe.unet.dtype == torch.float16
