"""Benchmark 6 — scale: time per image as the size grows and as the steps grow.

Through the engine (``host.engine.generate`` of an ImageJob: routing, adaptation, cache,
the pipeline call — the path every node takes; ``generate_image_v2`` itself only offers
the aspect-ratio table, which on the embedded model has no 128² entry), one image per call:

* size: 64², 128², 256² at 20 steps → exponent of time in pixels, from a least-squares
  fit of log(time) on log(pixels);
* steps: 5, 10, 20, 40 at 64² → linear fit time = fixed + per_step × steps, with R².

Each point also runs the raw ``pipe(...)`` on the same pipeline object (interleaved),
so the host/raw ratio can be read across sizes and step counts.  Medians of repetitions.

Run: ``python bench/scale.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

SIZES = (64, 128, 256)
STEPS = (5, 10, 20, 40)
LINEAR_R2 = 0.99  # "cost is linear in steps"


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 1 if args.quick else 9  # a 64x64 call is ~0.3 s: the machine's speed phases outlast it
    info = c.print_machine()
    conn, label = c.model_connection(args)

    from imagenodes import Exact, Host, ImageJob
    from imagenodes.registry.runner import runtime_config

    host = Host(workspace="memory://bench-scale", connections={"default": conn})
    connection = runtime_config(host.connections.for_category("pixelml"))

    def request(size: int, steps: int) -> ImageJob:
        return ImageJob(
            prompt=c.PROMPT,
            negative_prompt=c.NEGATIVE,
            guidance_scale=7.5,
            steps=steps,
            size=Exact(size, size),
            seed=11,
        )

    def engine_ms(size: int, steps: int) -> tuple[float, dict[str, Any]]:
        # Both sides in a fresh thread each, as Host.run runs a node: a thread that ran
        # torch keeps a libgomp pool alive and slows the other side (_common explains).
        result = c.in_fresh_thread(lambda: host.engine.generate(request(size, steps), connection))
        eff = {**result.params, "threads": result.threads}
        assert (eff["width"], eff["height"]) == (size, size), eff
        return result.timings["generate_ms"], eff

    _, eff = engine_ms(64, 2)  # load and warm up
    pipe = c.cached_pipeline(host)

    def raw_ms(eff: dict[str, Any]) -> float:
        def call() -> float:
            start = time.perf_counter()
            pipe(**c.raw_kwargs(eff))
            return (time.perf_counter() - start) * 1000

        return c.in_fresh_thread(call, eff.get("threads"))

    points = sorted({(s, 20) for s in SIZES} | {(64, n) for n in STEPS})
    for size, _ in points:  # one warm-up per size (first call at a new shape allocates)
        engine_ms(size, 2)
    host_t: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    raw_t: dict[tuple[int, int], list[float]] = {p: [] for p in points}
    for rep in range(reps):
        for size, steps in points if rep % 2 == 0 else points[::-1]:
            ms, eff = engine_ms(size, steps)
            host_t[(size, steps)].append(ms)
            raw_t[(size, steps)].append(raw_ms(eff))

    def med(p: tuple[int, int]) -> float:
        return c.median(host_t[p])

    def ratio(p: tuple[int, int]) -> float:
        return c.median(h / r for h, r in zip(host_t[p], raw_t[p], strict=True))

    raw = c.placement(conn)
    print(
        f"model: {label}; 1 image per call, guidance 7.5, {c.describe_placement(raw)} "
        f"on both sides; {reps} repetitions"
    )
    print()
    size_rows = []
    for i, s in enumerate(SIZES):
        p = (s, 20)
        local = ""
        if i:  # local exponent against the previous size: where the cost curve bends
            prev = SIZES[i - 1]
            local = f"{math.log(med(p) / med((prev, 20))) / math.log((s / prev) ** 2):.2f}"
        raw = c.median(raw_t[p])
        size_rows.append(
            [f"{s}x{s}", s * s, f"{med(p):.1f}", f"{raw:.1f}", f"{ratio(p):.3f}", local]
        )
    print(
        c.table(
            ["size (20 steps)", "pixels", "host ms", "raw ms", "host/raw", "exponent vs previous"],
            size_rows,
        )
    )
    _, exponent, r2_size = c.fit_line(
        [math.log(s * s) for s in SIZES], [math.log(med((s, 20))) for s in SIZES]
    )
    step_rows = []
    for n in STEPS:
        p = (64, n)
        raw = c.median(raw_t[p])
        step_rows.append([n, f"{med(p):.1f}", f"{raw:.1f}", f"{ratio(p):.3f}", f"{med(p) / n:.1f}"])
    print()
    print(c.table(["steps (64x64)", "host ms", "raw ms", "host/raw", "ms/step"], step_rows))
    fixed, per_step, r2_steps = c.fit_line([float(n) for n in STEPS], [med((64, n)) for n in STEPS])
    print()
    print(
        f"size: time ∝ pixels^{exponent:.2f} (log-log fit, R² {r2_size:.3f}); "
        f"steps: time = {fixed:.1f} ms + {per_step:.2f} ms × steps (R² {r2_steps:.4f})"
    )
    c.dump(
        args.json,
        {
            "machine": info,
            "model": label,
            "host": {str(k): v for k, v in host_t.items()},
            "raw": {str(k): v for k, v in raw_t.items()},
            "exponent": exponent,
            "steps_fit": [fixed, per_step, r2_steps],
        },
    )
    linear = r2_steps >= LINEAR_R2
    print(
        f"SUMMARY: scale [{c.verdict(linear)}]: time per image ∝ pixels^{exponent:.2f} over "
        f"64²–256² at 20 steps (R² {r2_size:.3f}); linear in steps: {fixed:.0f} ms fixed + "
        f"{per_step:.1f} ms/step, R² {r2_steps:.4f} (target R² >= {LINEAR_R2}); host/raw "
        f"{min(ratio(p) for p in points):.3f}–{max(ratio(p) for p in points):.3f} across points"
    )


if __name__ == "__main__":
    main()
