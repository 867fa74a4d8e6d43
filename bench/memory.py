"""Benchmark 5 — memory: peak RSS and the cache's own accounting for 1, 2 and 3 models.

Each configuration runs in a fresh interpreter with ``IMAGENODES_CACHE_BYTES`` set, and
generates one image on each of its models in turn (a cold load each time):

* the models: the embedded model, then two small random Stable Diffusion models built
  here (the tiny SD model of ``imagenodes.testing`` with a wider UNet, so that each is
  large enough — tens of MB — to show in RSS; a few-MB tiny model would drown in noise);
* the budget: the bytes of the two small models plus half of the embedded one — so two
  models fit, and the third must evict exactly the least recently used (the embedded);
* a reference configuration holds all three under an 8 GiB budget (no eviction).

Per configuration: peak RSS (``ru_maxrss``), resident memory (VmRSS after
``gc.collect()``) right after the last model's load (the ``model_loaded`` event: load and
any eviction done, nothing generated yet) and at the end, the cache's ``total_bytes()``
against the budget, loads and evictions.  "Eviction works" means: the cache stays within
its budget, the evicted model is loaded again when asked for, and the evicted weights
leave resident memory — right after model 3's load, RSS of the evicting configuration is
below the no-eviction reference by at least 80 % of the evicted model's bytes.

Run: ``python bench/memory.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

#: Freed weights must leave RSS: at least this share of the evicted bytes.
FREED_TARGET = 0.8

CHILD = r"""
import gc, json, os, resource, sys
cfg = json.loads(sys.argv[1])
def rss():
    gc.collect()
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from imagenodes import Host
conns = {f"m{i}": m for i, m in enumerate(cfg["models"])}
host = Host(workspace="memory://bench-memory", connections=conns)
cache = host.engine.cache
inputs = {"prompt": "a red circle on a blue background", "negative_prompt": "",
          "aspect_ratio": "1:1", "steps": cfg["steps"], "batch_size": 1, "seed": 1}
steps = []
start_rss = rss()
loaded = {}
def on_event(event):
    # After the load (and any eviction), before the generation allocates anything.
    if event.type == "model_loaded":
        loaded["rss"] = rss()
for name in cfg["order"]:
    loaded.clear()
    host.run("generate_image_v2", inputs, connections={"pixelml": name}, on_event=on_event)
    steps.append({"model": name, "rss": rss(), "rss_loaded": loaded["rss"],
                  "cache_bytes": cache.total_bytes(),
                  "loads": cache.loads, "evictions": cache.evictions,
                  "resident": [e["source"] for e in cache.status()]})
print("RESULT " + json.dumps({
    "start_rss": start_rss, "steps": steps, "budget": cache.budget,
    "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "entry_bytes": {e["source"]: e["bytes"] for e in cache.status()},
}))
"""


def build_small_sd(path: Path, seed: int) -> Path:
    """Tiny SD pipeline with a wider UNet (128/256 channels): a few tens of MB."""
    if (path / "model_index.json").is_file():
        return path
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(str(c.tiny_model_dir("sd", seed)))
    torch.manual_seed(seed)
    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(128, 256),
        layers_per_block=2,
        cross_attention_dim=pipe.text_encoder.config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def child(cfg: dict[str, Any], budget: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "IMAGENODES_CACHE_BYTES": str(budget),
            "TRANSFORMERS_VERBOSITY": "error",
        },
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    steps = 2 if args.quick else 5
    info = c.print_machine()
    conn, label = c.model_connection(args)
    models_dir = Path(tempfile.gettempdir()) / "imagenodes-bench-memory-models"
    small = [build_small_sd(models_dir / f"small-sd-{s}", seed=s) for s in (1, 2)]
    # The small models are SD-family; force the embedded profile so 1:1 stays 64 px.
    models = [conn, *({"model": str(p), "profile": "embedded"} for p in small)]
    names = [label, "small-sd-1 (random)", "small-sd-2 (random)"]

    # Reference: all three resident (8 GiB budget) — also gives each model's bytes.
    big = 8 * 1024**3
    ref = child({"models": models, "order": ["m0", "m1", "m2"], "steps": steps}, big)
    sizes = [ref["entry_bytes"][str(Path(m["model"]))] for m in models]
    budget = sizes[1] + sizes[2] + sizes[0] // 2
    configs = {
        "1 model": ["m0"],
        "2 models": ["m0", "m1"],
        "3 models (evicts)": ["m0", "m1", "m2"],
        "3 models, then model 1 again": ["m0", "m1", "m2", "m0"],
    }
    results: dict[str, dict[str, Any]] = {}
    for name, order in configs.items():
        results[name] = child({"models": models, "order": order, "steps": steps}, budget)
    results["3 models, 8 GiB budget (reference)"] = ref

    print(
        f"models: 1 = {names[0]} ({sizes[0]} B), 2 = {names[1]} ({sizes[1]} B), "
        f"3 = {names[2]} ({sizes[2]} B); one {steps}-step 64x64 image on each, in order; "
        f"budget IMAGENODES_CACHE_BYTES={budget} (models 2+3 + half of 1)"
    )
    print()
    rows = []
    for name, r in results.items():
        last = r["steps"][-1]
        rows.append(
            [
                name,
                c.mib(r["peak_rss"]),
                c.mib(last["rss_loaded"]),
                c.mib(last["rss"]),
                c.mib(last["rss"] - r["start_rss"]),
                last["cache_bytes"],
                r["budget"],
                "yes" if last["cache_bytes"] <= r["budget"] else "NO",
                last["loads"],
                last["evictions"],
                len(last["resident"]),
            ]
        )
    print(
        c.table(
            [
                "configuration",
                "peak RSS MiB",
                "RSS at last load MiB",
                "end RSS MiB",
                "end − start MiB",
                "cache bytes",
                "budget",
                "within",
                "loads",
                "evictions",
                "resident",
            ],
            rows,
        )
    )
    per_model = []
    r2 = results["3 models, 8 GiB budget (reference)"]["steps"]
    prev = results["3 models, 8 GiB budget (reference)"]["start_rss"]
    for i, s in enumerate(r2):
        per_model.append([names[i], sizes[i], c.mib(s["rss"] - prev), c.mib(sizes[i])])
        prev = s["rss"]
    print()
    print(c.table(["model (reference run)", "cache bytes", "RSS Δ MiB", "cache MiB"], per_model))
    evict = results["3 models (evicts)"]
    # At the model_loaded event of model 3 (its load and the eviction done, nothing
    # generated yet), against the same moment of the no-eviction reference.
    freed = ref["steps"][2]["rss_loaded"] - evict["steps"][2]["rss_loaded"]
    again = results["3 models, then model 1 again"]["steps"][-1]
    within = all(s["cache_bytes"] <= r["budget"] for r in results.values() for s in r["steps"][-1:])
    evicted_ok = evict["steps"][-1]["evictions"] == 1 and again["loads"] == 4
    freed_ok = freed >= FREED_TARGET * sizes[0]
    print()
    print(
        f"evicted model 1 ({sizes[0]} B): right after model 3 is loaded, RSS of the evicting "
        f"run is {freed} B ({c.mib(freed)} MiB) below the no-eviction reference at the same "
        f"moment; asking for model 1 again "
        f"reloads it (loads {again['loads']}, evictions {again['evictions']})"
    )
    c.dump(args.json, {"machine": info, "results": results, "sizes": sizes, "budget": budget})
    ok = within and evicted_ok and freed_ok
    print(
        f"SUMMARY: memory [{c.verdict(ok)}]: peak RSS 1/2/3 models "
        f"{c.mib(results['1 model']['peak_rss'])}/{c.mib(results['2 models']['peak_rss'])}/"
        f"{c.mib(evict['peak_rss'])} MiB; cache {evict['steps'][-1]['cache_bytes']} B <= budget "
        f"{budget} B [{c.verdict(within)}]; eviction at model 3 and reload on demand "
        f"[{c.verdict(evicted_ok)}]; evicted weights left RSS: {c.mib(freed)} of "
        f"{c.mib(sizes[0])} MiB [{c.verdict(freed_ok)}]"
    )


if __name__ == "__main__":
    main()
