"""Benchmark 4 — batching: eight requests of one shape, five ways, against raw batched diffusers.

Throughput (images per second, end to end) of:

* ``raw batched``: one ``pipe(num_images_per_prompt=8)`` on the host's own pipeline
  object — the reference every ratio is taken against;
* ``raw sequential``: eight single-image ``pipe(...)`` calls (what batching buys raw);
* ``host sequential``: eight ``host.run("generate_image_v2", batch_size=1)``;
* ``host batched``: one ``host.run("generate_image_v2", batch_size=8)`` — the target row;
* ``host concurrent``: eight ``host.run(batch_size=1)`` from eight threads at once.  The
  host has no cross-run batching: the runs queue on the cache entry's lock (diffusers
  pipelines keep per-call state), so this shows what a builder firing eight requests
  at once gets;
* ``image_generator``: one ``host.run("image_generator")`` with eight image requests of
  one shape, which the node groups into one pipeline call (n/a when the node is absent).

Host rows are end to end (PNG encode and a local-disk commit included); raw rows store
nothing, so the ratios are conservative for the host.  Each repetition runs every variant,
in rotating order; the verdict is the median over repetitions of the per-repetition ratio.

Run: ``python bench/batching.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

N = 8
TARGET = 0.9
SEED = 100


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 1 if args.quick else 15  # the machine's speed phases outlast a rep: 7 were too few
    steps = 5 if args.quick else 20
    info = c.print_machine()
    conn, label = c.model_connection(args)

    from imagenodes import Host

    tmp = Path(tempfile.mkdtemp(prefix="imagenodes-bench-batch-"))
    try:
        host = Host(workspace=tmp / "workspace", connections={"default": conn})
        base = {
            "prompt": c.PROMPT,
            "negative_prompt": c.NEGATIVE,
            "aspect_ratio": "1:1",
            "steps": steps,
            "guidance_scale": 7.5,
        }
        warm = host.run("generate_image_v2", {**base, "batch_size": N, "seed": SEED})
        pipe = c.cached_pipeline(host)
        eff = warm.effective[0]
        width, height = eff["width"], eff["height"]
        has_generator = "image_generator" in host.nodes
        gen_inputs = {
            "images": [
                {
                    "prompt": c.PROMPT,
                    "negativePrompt": c.NEGATIVE,
                    "steps": steps,
                    "width": width,
                    "height": height,
                    "guidanceScale": 7.5,
                    "seed": SEED + i,
                    "batchSize": 1,
                }
                for i in range(N)
            ]
        }
        calls: dict[str, int] = {}

        # Raw calls run in a fresh thread, as the host runs each node (libgomp keeps a
        # worker pool per thread that ran torch; see _common.in_fresh_thread).
        def raw_batched() -> None:
            c.in_fresh_thread(
                lambda: pipe(**c.raw_kwargs({**eff, "num_images": N, "seed": SEED, "seeds": None})),
                eff.get("threads"),
            )
            calls["raw batched"] = 1

        def raw_sequential() -> None:
            def run() -> None:
                for i in range(N):
                    pipe(**c.raw_kwargs({**eff, "num_images": 1, "seed": SEED + i, "seeds": None}))

            c.in_fresh_thread(run, eff.get("threads"))
            calls["raw sequential"] = N

        def host_sequential() -> None:
            n = 0
            for i in range(N):
                n += host.run(
                    "generate_image_v2", {**base, "batch_size": 1, "seed": SEED + i}
                ).pipeline_calls
            calls["host sequential"] = n

        def host_batched() -> None:
            r = host.run("generate_image_v2", {**base, "batch_size": N, "seed": SEED})
            calls["host batched"] = r.pipeline_calls

        def host_concurrent() -> None:
            with ThreadPoolExecutor(N) as pool:
                results = list(
                    pool.map(
                        lambda i: host.run(
                            "generate_image_v2", {**base, "batch_size": 1, "seed": SEED + i}
                        ),
                        range(N),
                    )
                )
            calls["host concurrent"] = sum(r.pipeline_calls for r in results)

        def image_generator() -> None:
            r = host.run("image_generator", gen_inputs)
            calls["image_generator"] = int(r.outputs["pipelineCalls"])

        variants: dict[str, Callable[[], None]] = {
            "raw batched": raw_batched,
            "raw sequential": raw_sequential,
            "host sequential": host_sequential,
            "host batched": host_batched,
            "host concurrent": host_concurrent,
        }
        if has_generator:
            image_generator()  # warm-up: first run of the node (imports, stores)
            variants["image_generator"] = image_generator
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
        loads = host.engine.cache.loads
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ref = times["raw batched"]
    rows: list[list[Any]] = []
    ratios: dict[str, float] = {}
    descriptions = {
        "raw batched": "pipe(num_images_per_prompt=8)",
        "raw sequential": "8 × pipe(...)",
        "host sequential": "8 × host.run(batch_size=1)",
        "host batched": "host.run(batch_size=8)",
        "host concurrent": "8 threads × host.run(batch_size=1)",
        "image_generator": "host.run(image_generator, 8 requests)",
    }
    for name in [*variants, *([] if has_generator else ["image_generator"])]:
        if name not in times:
            rows.append([name, descriptions[name], "n/a", "n/a", "n/a", "n/a"])
            continue
        t = times[name]
        ratio = c.median(r / x for r, x in zip(ref, t, strict=True))
        ratios[name] = ratio
        rows.append(
            [
                name,
                descriptions[name],
                f"{c.median(t) * 1000:.0f}",
                f"{N / c.median(t):.2f}",
                f"{ratio:.3f}",
                calls.get(name, "?"),
            ]
        )
    print(
        f"model: {label}; {N} images {width}x{height}, {steps} steps, guidance 7.5, "
        f"{eff['device']} {eff['dtype']}, {eff.get('threads')} thread(s) on both sides; "
        f"{reps} repetitions, rotating order; local-disk workspace; cache loads: {loads}"
    )
    print()
    print(
        c.table(
            ["variant", "what", "ms for 8", "images/s", "throughput vs raw batched", "calls"],
            rows,
        )
    )
    c.dump(args.json, {"machine": info, "model": label, "times": times, "ratios": ratios})
    ok = ratios["host batched"] >= TARGET
    gen = f"{ratios['image_generator']:.3f}x" if "image_generator" in ratios else "n/a"
    print(
        f"SUMMARY: batching [{c.verdict(ok)}]: host batched {ratios['host batched']:.3f}x raw "
        f"batched throughput (target >= {TARGET}); image_generator {gen}; host sequential "
        f"{ratios['host sequential']:.3f}x; host concurrent {ratios['host concurrent']:.3f}x; "
        f"raw sequential {ratios['raw sequential']:.3f}x"
    )


if __name__ == "__main__":
    main()
