"""Tiny random-weight diffusers pipelines of every supported family, built offline.

Why this exists: the engine's code paths (loading a folder, routing on
``model_index.json``, ``from_pipe`` derivation, scheduler swaps, size rounding) must be
tested against *real* diffusers pipeline classes, but real checkpoints are gigabytes and
live on a hub that CI cannot reach. The builders here instantiate the genuine classes
(UNet, VAE, FLUX transformer, CLIP/T5 text encoders, tokenizers, schedulers) from small
configs with seeded random weights and ``save_pretrained`` them as an ordinary diffusers
folder, so ``DiffusionPipeline.from_pretrained(path)`` works exactly as it does for a
downloaded model. Images are noise, but their sizes, dtypes and the control flow are real.

Design choices that matter to callers:

* Every family uses a 4-level VAE, i.e. ``vae_scale_factor == 8`` like the real models,
  so the size rules hold as in production: SD-like families need multiples of 8,
  FLUX multiples of 16 (VAE factor 8 × 2×2 latent patches). The UNets' ``sample_size``
  is 8, so the pipelines' *default* size is 64×64 (FLUX hard-codes a 1024 default).
* Tokenizers are made locally (no hub): a byte-level CLIP BPE vocabulary with every
  single byte symbol (with and without ``</w>``), a few whole words and the two CLIP
  specials in the real id layout (specials last), and a small T5 Unigram vocabulary.
  Any prompt tokenizes; words outside the small vocabulary fall back to characters.
* ``torch.manual_seed(seed)`` is set once before a build, so the same family and seed
  give bit-identical weights.

``build_sd15_architecture`` is the opposite end: the real Stable Diffusion 1.5 sizes
(~860M-parameter UNet) with random weights, for GPU throughput benchmarks only.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "FAMILIES",
    "TINY_IMAGE_SIZE",
    "build_sd15_architecture",
    "build_sd15_pipeline",
    "build_tiny_model",
    "build_tiny_pipeline",
]

#: Supported family names (the same names as the engine's model profiles).
FAMILIES: tuple[str, ...] = ("sd", "sd-turbo", "sdxl", "sdxl-turbo", "instruct-pix2pix", "flux")

#: Side length (pixels) a tiny model of each family generates at by default in tests.
#: All are 64: a multiple of 8 for the SD-like families and of 16 for FLUX.
TINY_IMAGE_SIZE: dict[str, int] = dict.fromkeys(FAMILIES, 64)

# Words that get a single token in the tiny vocabularies: common prompt words, the
# embedded shapes model's domain and instruct-pix2pix style instructions. Purely cosmetic
# (any text tokenizes), but whole-word tokens make tokenizer-level tests readable.
_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "painting", "picture",
    "cat", "dog", "squirrel", "eating", "burger", "astronaut", "riding", "horse",
    "landscape", "portrait", "high", "quality", "blurry", "bad", "make", "it", "turn",
    "into", "red", "green", "blue", "yellow", "white", "black", "orange", "purple",
    "circle", "square", "triangle", "background",
)  # fmt: skip

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
#: Real CLIP vocabulary size (ViT-L/14, OpenCLIP ViT-H/G): 49406 BPE entries + 2 specials.
_CLIP_FULL_VOCAB = 49408
_CLIP_MAX_LENGTH = 77
_T5_MAX_LENGTH = 512

# SD 1.x/2.x/XL noise schedule (shared by every SD-like scheduler config below).
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-symbol table: printable bytes map to themselves, the rest are
    shifted above U+0100 so that every byte has a visible, whitespace-free symbol."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return dict(sorted(table.items()))


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair-merge ``pieces`` like a BPE tokenizer: repeatedly join the adjacent pair
    with the lowest merge rank until no adjacent pair is a known merge."""
    pieces = list(pieces)
    unknown = len(ranks)
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, unknown), i) for i, pair in enumerate(pairwise(pieces)))
        if rank == unknown:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _clip_vocab_and_merges(
    words: Iterable[str], vocab_size: int | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build a CLIP-layout BPE vocabulary: 256 byte symbols, the same with ``</w>``, the
    merge results for ``words``, optional filler entries up to ``vocab_size``, then
    ``<|startoftext|>`` and ``<|endoftext|>`` as the two highest ids (as in real CLIP,
    which CLIP's pooling relies on when it takes the argmax id as the end token)."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in [*symbols, *(s + "</w>" for s in symbols)]:
        vocab[symbol] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Tokenize the word with the merges so far, then chain the resulting pieces left
        # to right: ((p1 p2) p3) ... The new merges rank after all earlier ones, so they
        # apply only once the earlier ones are exhausted and the word ends as one token.
        pieces = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((merged, piece), len(ranks))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    merges = sorted(ranks, key=ranks.__getitem__)
    if vocab_size is not None:
        fillers = vocab_size - 2 - len(vocab)
        if fillers < 0:
            raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab) + 2} base tokens")
        # Entries no merge ever produces: they only widen the id space to the real size.
        for i in range(fillers):
            vocab[f"<|unused_{i}|>"] = len(vocab)
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return vocab, merges


def _clip_tokenizer(vocab_size: int | None = None, pad_token: str = _CLIP_EOS) -> CLIPTokenizer:
    """A local CLIP tokenizer, written as ``vocab.json`` + ``merges.txt`` and loaded back.

    transformers 5 dropped ``CLIPTokenizer(vocab_file, merges_file)``: the constructor now
    takes in-memory ``vocab``/``merges`` and silently ignores ``*_file`` arguments, and
    files are only read by ``from_pretrained`` (a local folder never touches the hub).
    Going through the files keeps us on the same load path as a downloaded tokenizer.
    ``model_max_length`` must be 77: the pipelines pad to it and the text encoders have
    77 positions.
    """
    vocab, merges = _clip_vocab_and_merges(_WORDS, vocab_size)
    with tempfile.TemporaryDirectory(prefix="imagenodes-clip-tok-") as tmp:
        folder = pathlib.Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")
        tokenizer: CLIPTokenizer = CLIPTokenizer.from_pretrained(
            folder, model_max_length=_CLIP_MAX_LENGTH, pad_token=pad_token
        )
        return tokenizer


def _t5_tokenizer() -> T5Tokenizer:
    """A tiny T5 Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2 (T5's layout),
    ``▁`` + whole words, then single characters as the fallback pieces.

    In transformers 5 ``T5TokenizerFast`` is only an alias of ``T5Tokenizer`` (used here
    by its real name, the one transformers' type information exports), which builds its
    ``tokenizers`` Unigram backend (Metaspace pre-tokenizer, ``</s>`` post-processor) from
    a ``vocab`` list of ``(piece, log-prob)`` pairs; passing our own ``tokenizer_object``
    would be overwritten by that constructor, so we hand it the vocabulary instead.
    No sentinel ``<extra_id_N>`` tokens: the FLUX encoder never sees them.
    """
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + word, -5.0) for word in _WORDS]
    pieces.append(("▁", -8.0))
    pieces += [(chr(c), -10.0) for c in range(ord("!"), ord("~") + 1)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_T5_MAX_LENGTH)


# ---------------------------------------------------------------------------- components


def _clip_text_config(
    tokenizer: CLIPTokenizer, hidden_size: int = 32, hidden_act: str = "quick_gelu"
) -> CLIPTextConfig:
    """Tiny CLIP text encoder config whose vocabulary and special ids match ``tokenizer``.

    ``eos_token_id`` is the real end-of-text id (not the legacy 2), so the pooled output is
    taken at the first end token, as in current CLIP checkpoints.
    """
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae(latent_channels: int = 4, **config: Any) -> AutoencoderKL:
    """4-level VAE (factor 8, like every real SD/SDXL/FLUX VAE) with 32–64 channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=32,
        sample_size=64,
        **config,
    )


def _tiny_sd_unet(in_channels: int = 4, sd2: bool = False) -> UNet2DConditionModel:
    """Two-level SD 1.x UNet (cross-attention at the higher resolution, as in SD).

    ``sd2`` switches on the SD 2.x flags (linear projections in the transformer blocks,
    per-level head counts) that SD-Turbo inherits from SD 2.1.
    """
    extra: dict[str, Any] = (
        {"attention_head_dim": (2, 4), "use_linear_projection": True}
        if sd2
        else {"attention_head_dim": 4}
    )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        norm_num_groups=32,
        **extra,
    )


def _sd_like(
    unet_in_channels: int,
    scheduler: Any,
    pipeline_class: type[DiffusionPipeline],
    sd2: bool = False,
) -> DiffusionPipeline:
    """Shared body of the SD 1.x-shaped families (one CLIP text encoder, one UNet)."""
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(
        _clip_text_config(tokenizer, hidden_act="gelu" if sd2 else "quick_gelu")
    )
    return pipeline_class(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_tiny_sd_unet(in_channels=unet_in_channels, sd2=sd2),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _build_sd() -> DiffusionPipeline:
    """SD 1.5 shape; DDIM with SD 1.5's schedule (the real repo ships PNDM, which needs
    more steps than the 1–2 a test runs to get past its warm-up)."""
    scheduler = DDIMScheduler(
        **_SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return _sd_like(4, scheduler, StableDiffusionPipeline)


def _build_sd_turbo() -> DiffusionPipeline:
    """SD-Turbo: the SD pipeline class with SD 2.1 flags and a trailing-spaced Euler
    scheduler (what stabilityai/sd-turbo ships), so 1 step starts from pure noise."""
    scheduler = EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="trailing", steps_offset=1)
    return _sd_like(4, scheduler, StableDiffusionPipeline, sd2=True)


def _build_instruct_pix2pix() -> DiffusionPipeline:
    """InstructPix2Pix: SD 1.5 shape whose UNet takes 8 channels (noise + image latents)."""
    scheduler = EulerAncestralDiscreteScheduler(**_SD_BETAS, steps_offset=1)
    return _sd_like(8, scheduler, StableDiffusionInstructPix2PixPipeline)


def _sdxl(scheduler: Any) -> DiffusionPipeline:
    """SDXL shape: CLIP-L-like + CLIP-G-like (with projection) encoders whose penultimate
    states are concatenated (32 + 32 = cross-attention 64), and the ``text_time``
    added conditioning fed by 6 micro-conditioning ids × 8 + the 32-d pooled embedding."""
    tokenizer = _clip_tokenizer()
    # The real tokenizer_2 (OpenCLIP ViT-bigG) pads with "!" rather than <|endoftext|>.
    tokenizer_2 = _clip_tokenizer(pad_token="!")
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer_2, hidden_act="gelu"))
    addition_time_embed_dim = 8
    pooled_dim = text_encoder_2.config.projection_dim
    assert pooled_dim is not None  # set by _clip_text_config (typed Optional upstream)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + pooled_dim,
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        # Explicit False: None would mean "use invisible-watermark if it is installed",
        # making outputs depend on the environment.
        add_watermarker=False,
    )


def _build_sdxl() -> DiffusionPipeline:
    """SDXL base: Euler with leading spacing, as stabilityai/stable-diffusion-xl-base-1.0."""
    scheduler = EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading", steps_offset=1)
    return _sdxl(scheduler)


def _build_sdxl_turbo() -> DiffusionPipeline:
    """SDXL-Turbo: SDXL architecture, trailing-spaced Euler Ancestral (as shipped)."""
    scheduler = EulerAncestralDiscreteScheduler(**_SD_BETAS, timestep_spacing="trailing")
    return _sdxl(scheduler)


def _build_flux() -> DiffusionPipeline:
    """FLUX.1 shape: 16-channel VAE latents packed into 2×2 patches (transformer
    ``in_channels`` 64), RoPE axes summing to the head dim, T5 states as the joint
    sequence and the CLIP pooled output as the pooled projection.

    ``guidance_embeds=True`` (FLUX.1-dev style) so the guidance value reaches the model;
    the scheduler uses dev's resolution-dependent shift.
    """
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    tokenizer_2 = _t5_tokenizer()
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            # huggingface_hub's @strict config accepts extra kwargs at run time (stored on
            # the config) but leaves them out of its generated __init__ signature.
            decoder_start_token_id=tokenizer_2.pad_token_id,  # type: ignore[call-arg]
        )
    )
    latent_channels = 16
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _tiny_vae(
        latent_channels=latent_channels,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "sd": _build_sd,
    "sd-turbo": _build_sd_turbo,
    "sdxl": _build_sdxl,
    "sdxl-turbo": _build_sdxl_turbo,
    "instruct-pix2pix": _build_instruct_pix2pix,
    "flux": _build_flux,
}


# -------------------------------------------------------------------------------- public


def build_tiny_pipeline(family: str, seed: int = 0) -> DiffusionPipeline:
    """Return an in-memory tiny pipeline of ``family`` (float32, CPU, random weights).

    Use this when a test needs a pipeline object but not a folder; the weights are the
    same as :func:`build_tiny_model` writes for the same ``seed``.
    """
    try:
        builder = _BUILDERS[family]
    except KeyError:
        raise ValueError(
            f"unknown tiny model family {family!r}; expected one of {', '.join(FAMILIES)}"
        ) from None
    torch.manual_seed(seed)
    return builder()


def build_tiny_model(family: str, path: str | os.PathLike[str], seed: int = 0) -> pathlib.Path:
    """Build a tiny random-weight pipeline of ``family`` and save it to ``path``.

    The folder is a complete diffusers pipeline (``model_index.json``, one sub-folder per
    component, safetensors weights, tokenizer files), loadable offline with
    ``DiffusionPipeline.from_pretrained(path)``. Builds take a second or two on CPU and
    the folders are a few MB. Returns ``path`` as a :class:`pathlib.Path`.
    """
    pipeline = build_tiny_pipeline(family, seed)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def build_sd15_pipeline(
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    *,
    layers_per_block: int = 2,
    tokenizer: CLIPTokenizer | None = None,
) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5 at its real sizes, with random weights.

    UNet 320/640/1280/1280 with 768-d cross-attention (≈860M parameters), VAE
    128/256/512/512 (≈84M), CLIP ViT-L/14 text encoder (12 layers, 768 hidden, 49408
    vocab, ≈123M) and a local tokenizer padded with filler tokens to the same 49408 ids.
    Throughput of a real checkpoint depends only on these shapes, so GPU benchmarks can
    run without downloading one. ``device="meta"`` builds the module tree without
    allocating any weights (used to check the configs); ``device="cuda"`` initialises
    directly on the GPU, which is much faster than a ~1B-parameter CPU init.

    ``layers_per_block=1`` halves the UNet's depth (the peer benchmark's CPU model, so a
    call takes seconds); ``tokenizer`` replaces the filler tokenizer with a real CLIP
    one of the same 49408 ids (the peer benchmark passes ComfyUI's own files).
    """
    torch.manual_seed(seed)
    if tokenizer is None:
        tokenizer = _clip_tokenizer(vocab_size=_CLIP_FULL_VOCAB)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=layers_per_block,
            attention_head_dim=8,
            cross_attention_dim=768,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=_CLIP_FULL_VOCAB,
                hidden_size=768,
                intermediate_size=3072,
                projection_dim=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=_CLIP_MAX_LENGTH,
                hidden_act="quick_gelu",
                layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = PNDMScheduler(
        **_SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return pipeline.to(dtype=dtype)


def build_sd15_architecture(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float16,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> pathlib.Path:
    """Save a random-weight Stable Diffusion 1.5 (real sizes, see
    :func:`build_sd15_pipeline`) to ``path`` for GPU benchmarks and return the path.

    About 2 GB in float16; far too big for CI, which never calls this.
    """
    if str(device) == "meta":
        raise ValueError("a meta-device pipeline has no weights to save")
    pipeline = build_sd15_pipeline(dtype=dtype, device=device, seed=seed)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
