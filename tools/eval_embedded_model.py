"""Evaluate the embedded default model on the 48 held-out prompts.

Loads the saved folder exactly as a user would (plain
``StableDiffusionPipeline.from_pretrained``), generates one 64x64 image per
held-out (shape, colour, bg) combination with fixed seeds (seed = prompt index),
20 steps, guidance 7.5, judges every image by pixels with
``imagenodes.engine.shapes.judge`` and reports background / shape-colour /
shape-type accuracy plus seconds per image. With ``--compare`` it also runs
the same prompts with other schedulers (PNDM, DDIM, Euler, DPM-Solver++) for
comparison.

Usage::

    .venv/bin/python tools/eval_embedded_model.py --out /tmp/eval.json --compare
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


@torch.no_grad()
def heldout_images(
    pipe, seeds: list[int], steps: int = 20, guidance: float = 7.5, size: int = 64
) -> Iterator[tuple[tuple[str, str, str], Image.Image]]:
    """(combo, image) for the first ``len(seeds)`` held-out prompts, one seed each.

    The training script's sampler selection runs this same loop with its own seeds.
    """
    for combo, seed in zip(shapes.heldout_prompts(), seeds, strict=False):
        yield (
            combo,
            pipe(
                shapes.prompt_for(*combo),
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=torch.Generator().manual_seed(seed),
            ).images[0],
        )


@torch.no_grad()
def evaluate(pipe, steps: int, guidance: float, save_dir: Path | None, tag: str) -> dict:
    n = len(shapes.heldout_prompts())
    combos, verdicts, failures = [], [], []
    # warm-up (first call pays one-off allocation costs), not timed
    pipe("a red circle on a blue background", num_inference_steps=steps, height=64, width=64)
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    for i, (combo, img) in enumerate(heldout_images(pipe, list(range(n)), steps, guidance)):
        verdict = shapes.judge(img)
        combos.append(combo)
        verdicts.append(verdict)
        if (verdict["shape"], verdict["colour"], verdict["background"]) != combo:
            shape, colour, bg = combo
            failures.append({"shape": shape, "colour": colour, "bg": bg, "judged": verdict})
        if save_dir is not None:
            s, c, b = combo
            img.save(save_dir / f"{tag}_{i:02d}_{s}_{c}_on_{b}.png")
    return {
        "scheduler": type(pipe.scheduler).__name__,
        "n": n,
        **shapes.adherence(combos, verdicts),
        "sec_per_image": (time.perf_counter() - t0) / n,
        # CPU seconds of this process per image (all threads): with 1 thread this
        # is close to the wall time on an otherwise idle machine.
        "cpu_sec_per_image": (time.process_time() - c0) / n,
        "threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "failures": failures,
    }


def heldout_adherence(
    pipe, seeds: list[int], steps: int = 20, guidance: float = 7.5, size: int = 64
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
    ap.add_argument("--compare", action="store_true", help="also run other schedulers")
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
        "size": "64x64",
        "seeds": "prompt index 0..47",
        "saved_scheduler": saved,
        "saved": evaluate(pipe, args.steps, args.guidance, args.save_images, "saved"),
    }
    print(json.dumps({k: v for k, v in result["saved"].items() if k != "failures"}), flush=True)
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
            r = evaluate(pipe, args.steps, args.guidance, None, name)
            r.pop("failures")
            result["compare"][name] = r
            print(json.dumps(r), flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
