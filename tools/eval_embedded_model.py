"""Evaluate the embedded default model on the 48 held-out prompts at every aspect bucket.

Loads the saved folder exactly as a user would (plain
``StableDiffusionPipeline.from_pretrained``), generates one image per held-out
(shape, colour, bg) combination and bucket of ``shapes.BUCKETS`` (64x64,
56x72, 72x56, 48x88, 88x48) with fixed seeds (seed = prompt index), 20 steps,
guidance 7.5, judges every image by pixels with ``shapes.judge`` and reports,
per bucket, background / shape-colour / shape-type accuracy, ``one_right``
(all three right *and* exactly one shape) and seconds per image (also per
64x64-worth of pixels, so buckets compare at equal area). With ``--compare``
it also runs the 64x64 prompts with other schedulers (PNDM, DDIM, Euler,
DPM-Solver++). With ``--e2e N`` it also generates through the public API
(``Host.run("generate_image_v2", ...)``) at the 15 aspect ratios of seed 000,
N held-out prompts each, upscaling or whatever the engine does included, and
judges the delivered images.

Usage::

    .venv/bin/python tools/eval_embedded_model.py --out /tmp/eval.json
    .venv/bin/python tools/eval_embedded_model.py --buckets 1:1 --compare
    .venv/bin/python tools/eval_embedded_model.py --buckets --e2e 3   # API only

``--model`` for ``--e2e`` must be a folder named ``*embedded_model`` so that the
engine routes it to the ``embedded`` profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Before torch initialises OpenMP: on a shared 2-core machine spinning OpenMP
# workers make 2-thread inference many times slower when other processes run.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

import shapes  # noqa: E402  (tools/shapes.py: the training domain)

DEFAULT_MODEL = REPO / "src" / "imagenodes" / "engine" / "embedded_model"


def make_scheduler(name: str, config: dict):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    cls = {
        "pndm": PNDMScheduler,
        "ddim": DDIMScheduler,
        "euler": EulerDiscreteScheduler,
        "dpmpp": DPMSolverMultistepScheduler,
    }[name]
    if name == "pndm":
        # the settings of the stock Stable Diffusion v1 PNDM config
        return cls.from_config(config, skip_prk_steps=True, set_alpha_to_one=False)
    return cls.from_config(config)


Size = int | tuple[int, int]  # a side, or (width, height)


def _wh(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


@torch.no_grad()
def heldout_images(
    pipe, seeds: list[int], steps: int = 20, guidance: float = 7.5, size: Size = 64
) -> Iterator[tuple[tuple[str, str, str], Image.Image]]:
    """(combo, image) for the first ``len(seeds)`` held-out prompts, one seed each.

    The training script's sampler selection runs this same loop with its own seeds.
    """
    width, height = _wh(size)
    for combo, seed in zip(shapes.heldout_prompts(), seeds, strict=False):
        yield (
            combo,
            pipe(
                shapes.prompt_for(*combo),
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                generator=torch.Generator().manual_seed(seed),
            ).images[0],
        )


@torch.no_grad()
def evaluate(
    pipe,
    steps: int,
    guidance: float,
    save_dir: Path | None,
    tag: str,
    size: Size = 64,
    n: int = 48,
) -> dict:
    n = min(n, len(shapes.heldout_prompts()))
    width, height = _wh(size)
    combos, verdicts, failures = [], [], []
    # warm-up (first call pays one-off allocation costs), not timed
    pipe(
        "a red circle on a blue background",
        num_inference_steps=steps,
        height=height,
        width=width,
    )
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    seeds = list(range(n))
    for i, (combo, img) in enumerate(heldout_images(pipe, seeds, steps, guidance, size)):
        verdict = shapes.judge(img)
        combos.append(combo)
        verdicts.append(verdict)
        if (verdict["shape"], verdict["colour"], verdict["background"]) != combo or verdict[
            "count"
        ] != 1:
            shape, colour, bg = combo
            failures.append({"shape": shape, "colour": colour, "bg": bg, "judged": verdict})
        if save_dir is not None:
            s, c, b = combo
            img.save(save_dir / f"{tag}_{width}x{height}_{i:02d}_{s}_{c}_on_{b}.png")
    sec = (time.perf_counter() - t0) / n
    return {
        "scheduler": type(pipe.scheduler).__name__,
        "size": f"{width}x{height}",
        "n": n,
        **shapes.adherence(combos, verdicts),
        "sec_per_image": sec,
        # judging included; per 4096 px so that buckets of slightly different
        # area compare fairly ("no bucket slower per pixel")
        "sec_per_4096px": sec * 4096 / (width * height),
        # CPU seconds of this process per image (all threads): with 1 thread this
        # is close to the wall time on an otherwise idle machine.
        "cpu_sec_per_image": (time.process_time() - c0) / n,
        "threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "failures": failures,
    }


def heldout_adherence(
    pipe, seeds: list[int], steps: int = 20, guidance: float = 7.5, size: Size = 64
) -> dict[str, float]:
    """``shapes.adherence`` of :func:`heldout_images` (the training selection uses it too)."""
    combos, verdicts = [], []
    for combo, img in heldout_images(pipe, seeds, steps, guidance, size):
        combos.append(combo)
        verdicts.append(shapes.judge(img))
    return shapes.adherence(combos, verdicts)


def size_check(pipe, sizes: list[int], steps: int, guidance: float, n: int = 24) -> dict:
    """Adherence at sizes other than the native 64x64, on the first ``n`` held-out prompts.

    The model card's limitations (and the ``embedded`` profile's size cap) rest on this.
    """
    seeds = list(range(n))
    return {f"{s}x{s}": heldout_adherence(pipe, seeds, steps, guidance, s) for s in sizes}


#: The 15 aspect ratios of seed 000's generate_image_v2.
RATIOS: tuple[str, ...] = tuple(
    f"{r}{tier}" for tier in ("", "_HD", "_FHD") for r in ("1:1", "3:4", "4:3", "9:16", "16:9")
)


def e2e(model: Path, per_ratio: int, save_dir: Path | None) -> dict:
    """Judge delivered images of ``generate_image_v2`` at all 15 ratios, through ``Host.run``.

    Ratio number ``r`` uses held-out prompts ``r * per_ratio ...`` (mod 48), seed
    = prompt index, so the ratios together cover many different prompts. The
    engine decides the generated size (its bucket, a cap, an upscale): what is
    judged is what a user gets, and the sizes and notices are recorded.
    """
    import io
    import tempfile

    from imagenodes import Host

    held = shapes.heldout_prompts()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        connections = None
        if model.resolve() != DEFAULT_MODEL.resolve():
            connections = {"default": {"model": str(model)}}
        host = Host(tmp, connections=connections)
        for r, ratio in enumerate(RATIOS):
            combos, verdicts, sizes, notices = [], [], set(), set()
            t0 = time.perf_counter()
            for i in range(per_ratio):
                k = (r * per_ratio + i) % len(held)
                combo = held[k]
                result = host.run(
                    "generate_image_v2",
                    {
                        "prompt": shapes.prompt_for(*combo),
                        "negative_prompt": "",
                        "aspect_ratio": ratio,
                        "seed": k,
                    },
                )
                raw = host.workspace.read_bytes(result.outputs["images"][0])
                with Image.open(io.BytesIO(raw)) as im:
                    img = im.convert("RGB")
                sizes.add(f"{img.width}x{img.height}")
                for note in getattr(result, "notices", None) or []:
                    code = (
                        note.get("code") if isinstance(note, dict) else getattr(note, "code", None)
                    )
                    notices.add(str(code))
                combos.append(combo)
                verdicts.append(shapes.judge(img))
                if save_dir is not None:
                    img.save(save_dir / f"e2e_{ratio.replace(':', 'x')}_{k:02d}.png")
            out[ratio] = {
                "n": per_ratio,
                **shapes.adherence(combos, verdicts),
                "delivered": sorted(sizes),
                "notices": sorted(notices),
                "sec_per_image": (time.perf_counter() - t0) / per_ratio,
            }
            print(json.dumps({ratio: out[ratio]}), flush=True)
        loaded = host.engine.status().get("loaded") or [{}]
        out["profile"] = loaded[0].get("profile")
    return out


@torch.no_grad()
def timing(pipe, steps: int, guidance: float, repeats: int, per: int = 6) -> dict:
    """Seconds per image over ``repeats`` rounds of ``per`` images: min and median.

    The machine is shared; the minimum round is the best estimate of the idle
    speed, the median of what a user sees under the current load.
    """
    rounds = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(per):
            pipe(
                "a red circle on a blue background",
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(r * per + i),
            )
        rounds.append((time.perf_counter() - t0) / per)
    rounds.sort()
    return {
        "threads": torch.get_num_threads(),
        "rounds": repeats,
        "images_per_round": per,
        "min_sec_per_image": rounds[0],
        "median_sec_per_image": rounds[len(rounds) // 2],
        "loadavg_1min_after": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1 = what the engine uses)"
    )
    ap.add_argument(
        "--buckets",
        nargs="*",
        default=list(shapes.BUCKETS),
        choices=list(shapes.BUCKETS),
        help="aspect buckets to judge (default: all; none with --e2e alone)",
    )
    ap.add_argument("--n", type=int, default=48, help="held-out prompts per bucket (first N)")
    ap.add_argument(
        "--e2e", type=int, default=0, help="held-out prompts per ratio through Host.run (15 ratios)"
    )
    ap.add_argument("--compare", action="store_true", help="also run other schedulers at 64x64")
    ap.add_argument("--timing-repeats", type=int, default=0, help="extra best-of-N speed rounds")
    ap.add_argument(
        "--sizes", type=int, nargs="*", default=[], help="also judge these sizes (24 prompts)"
    )
    ap.add_argument("--save-images", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if args.save_images is not None:
        args.save_images.mkdir(parents=True, exist_ok=True)
    saved = type(pipe.scheduler).__name__
    result: dict = {
        "model": str(args.model),
        "steps": args.steps,
        "guidance": args.guidance,
        "seeds": "prompt index 0..47",
        "saved_scheduler": saved,
        "buckets": {},
    }
    for name in args.buckets:
        r = evaluate(
            pipe,
            args.steps,
            args.guidance,
            args.save_images,
            "saved",
            shapes.BUCKETS[name],
            args.n,
        )
        result["buckets"][name] = r
        print(json.dumps({name: {k: v for k, v in r.items() if k != "failures"}}), flush=True)
    if "1:1" in result["buckets"]:
        result["saved"] = result["buckets"]["1:1"]  # v1-v3's key: the 64x64 numbers
    if args.timing_repeats:
        result["timing"] = timing(pipe, args.steps, args.guidance, args.timing_repeats)
        print(json.dumps(result["timing"]), flush=True)
    if args.sizes:
        result["sizes"] = size_check(pipe, args.sizes, args.steps, args.guidance)
        print(json.dumps(result["sizes"]), flush=True)
    if args.compare:
        config = dict(pipe.scheduler.config)
        result["compare"] = {}
        for name in ("pndm", "ddim", "euler", "dpmpp"):
            pipe.scheduler = make_scheduler(name, config)
            if type(pipe.scheduler).__name__ == saved:
                continue
            r = evaluate(pipe, args.steps, args.guidance, None, name, 64, args.n)
            r.pop("failures")
            result["compare"][name] = r
            print(json.dumps(r), flush=True)
    if args.e2e:
        del pipe
        result["e2e"] = e2e(args.model, args.e2e, args.save_images)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
