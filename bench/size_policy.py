"""Benchmark 10 — size policies: what 9:16_HD and 16:9_FHD cost under each policy.

``generate_image_v2`` through ``host.run`` (the path every frontend takes), one image,
20 steps, for each connection ``size_policy``/``upscale`` pair:

* ``native``: the model's own size for the shape (the baseline: nothing to resize);
* ``upscale`` + ``lanczos`` (the default): native, then a Lanczos resize to the seed size;
* ``upscale`` + ``hires``: that, then an image-to-image pass at strength 0.3 at the
  delivered size capped to the family's maximum;
* ``cap``: the 0.1 behaviour, generating at the capped size itself.

Where the time goes comes from the run's own timings: ``generate`` (pipeline calls,
resize and hires included), ``hires`` (the second pass alone), ``encode`` (PNG) and
``store``.  Every policy's total is printed as a ratio of ``native`` measured in the
same run, so machine-speed drift cancels out.  Medians of repetitions, warm pipeline.

Run: ``python bench/size_policy.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

POLICIES = (("native", "lanczos"), ("upscale", "lanczos"), ("upscale", "hires"), ("cap", "lanczos"))
RATIOS = ("9:16_HD", "16:9_FHD")
#: The default policy's cost target: upscaling to the seed's size costs at most this
#: much over generating at the model's own size (resize + encoding a bigger PNG).
UPSCALE_BUDGET = 1.5


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 1 if args.quick else 5
    info = c.print_machine()
    conn, label = c.model_connection(args)

    from imagenodes import Host

    workspace = Path(tempfile.mkdtemp(prefix="bench-sizes-"))
    hosts = {
        (policy, upscale): Host(
            workspace,
            connections={"default": {**conn, "size_policy": policy, "upscale": upscale}},
        )
        for policy, upscale in POLICIES
    }
    inputs = {"prompt": "a purple triangle on a yellow background", "negative_prompt": ""}
    for host in hosts.values():  # warm: load each host's pipeline once
        host.run("generate_image_v2", {**inputs, "aspect_ratio": "1:1", "seed": 0, "steps": 2})

    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    for ratio in RATIOS:
        samples: dict[tuple[str, str], list[dict[str, float]]] = {p: [] for p in POLICIES}
        for rep in range(reps):
            for key in POLICIES:  # interleaved, so drift hits every policy alike
                t0 = time.perf_counter()
                result = hosts[key].run(
                    "generate_image_v2", {**inputs, "aspect_ratio": ratio, "seed": 10 + rep}
                )
                wall = (time.perf_counter() - t0) * 1000
                size = result.effective[0]["size"]
                samples[key].append(
                    {
                        "wall": wall,
                        "generate": result.timings.get("generate_ms", 0.0),
                        "hires": result.timings.get("hires_ms", 0.0),
                        "encode": result.timings.get("encode_ms", 0.0),
                        "store": result.timings.get("store_ms", 0.0),
                        "generated": size["generated"],
                        "delivered": size["delivered"],
                    }
                )
        for key, runs in samples.items():
            results[(ratio, *key)] = {
                **{m: c.median(r[m] for r in runs) for m in ("wall", "generate", "hires")},
                **{m: c.median(r[m] for r in runs) for m in ("encode", "store")},
                "generated": runs[0]["generated"],
                "delivered": runs[0]["delivered"],
            }

    rows = []
    for (ratio, policy, upscale), r in results.items():
        base = results[(ratio, "native", "lanczos")]["wall"]
        rows.append(
            [
                ratio,
                f"{policy}/{upscale}",
                r["generated"],
                r["delivered"],
                f"{r['generate']:.0f}",
                f"{r['hires']:.0f}",
                f"{r['encode']:.0f}",
                f"{r['store']:.0f}",
                f"{r['wall']:.0f}",
                f"{r['wall'] / base:.2f}x",
            ]
        )
    print(f"\nsize policies on {label}, 20 steps, median of {reps} (ms)")
    print(
        c.table(
            [
                "ratio",
                "policy/upscale",
                "generated",
                "delivered",
                "generate",
                "of it hires",
                "encode",
                "store",
                "wall",
                "wall / native",
            ],
            rows,
        )
    )
    upscale_ratio = max(
        results[(ratio, "upscale", "lanczos")]["wall"]
        / results[(ratio, "native", "lanczos")]["wall"]
        for ratio in RATIOS
    )
    hires_ratio = max(
        results[(ratio, "upscale", "hires")]["wall"] / results[(ratio, "native", "lanczos")]["wall"]
        for ratio in RATIOS
    )
    ok = upscale_ratio <= UPSCALE_BUDGET
    busy = " (a training ran meanwhile: not final)" if c.training_running() else ""
    print(
        f"\nSUMMARY: size policy [{c.verdict(ok)}]: upscale to the seed size costs "
        f"{upscale_ratio:.2f}x native (target <= {UPSCALE_BUDGET}x), hires {hires_ratio:.2f}x, "
        f"at 9:16_HD and 16:9_FHD on {label}, {info['cores']} cores{busy}"
    )


if __name__ == "__main__":
    main()
