"""Benchmark 2 — cold start: the first image in a fresh process, host versus raw diffusers.

Each side runs in its own fresh interpreter (``subprocess.run([sys.executable, "-c", …])``),
the two sides interleaved and alternating in order, several times; medians are compared.

* host: ``from imagenodes import Host``; ``Host()``; ``host.run("generate_image_v2")`` →
  PNG + ``run.json`` committed to a local-disk workspace.  Split as the host reports it:
  import (imagenodes, torch, plugin discovery, ``Host()``), load (``timings["load_ms"]``,
  which *includes importing diffusers and transformers*: the host imports them lazily
  on the first load), first generation (``generate_ms``), encode + store, other.
* raw: ``import torch``; ``from diffusers import StableDiffusionPipeline``;
  ``from_pretrained(folder, dtype=…)`` on the engine's device and dtype (float32 on CPU);
  one ``pipe(...)`` with the engine's kwargs;
  ``image.save(png)`` — what a user calling diffusers directly writes to get a file.

The verdict compares time-to-first-stored-image measured inside each process (from the
first line of the script; interpreter start-up is the same on both sides), and also
prints the whole process wall time (start-up and exit included).  One more host child,
outside the pairs, runs six times in one process: the second run must be a warm run (no
reload: ``cache.loads`` stays 1, and its time equals the median of runs 3–6).

Run: ``python bench/cold_start.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

TARGET = 1.05
WARM_TOLERANCE = 0.10  # second run within 10 % of the warm median counts as "equal"

HOST_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
cfg = json.loads(sys.argv[1])
from imagenodes import Host
host = Host(workspace=cfg["workspace"], connections={"default": cfg["connection"]})
t1 = time.perf_counter()
runs = []
for i in range(cfg["runs"]):
    s = time.perf_counter()
    r = host.run("generate_image_v2", cfg["inputs"])
    runs.append({"wall_ms": (time.perf_counter() - s) * 1000, **r.timings,
                 "loads": host.engine.cache.loads})
    if i == 0:
        t2 = time.perf_counter()
print("RESULT " + json.dumps({
    "import_ms": (t1 - t0) * 1000, "first_image_ms": (t2 - t0) * 1000, "runs": runs,
    "size": [r.effective[0]["width"], r.effective[0]["height"]],
}))
"""

RAW_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
cfg = json.loads(sys.argv[1])
import torch
from diffusers import StableDiffusionPipeline
if cfg.get("threads"):  # the engine's thread count for this model (its profile's)
    torch.set_num_threads(cfg["threads"])
t1 = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(cfg["model"], dtype=getattr(torch, cfg["dtype"]))
pipe.to(cfg["device"])
pipe.set_progress_bar_config(disable=True)
t2 = time.perf_counter()
a = cfg["inputs"]
image = pipe(
    prompt=a["prompt"], negative_prompt=a["negative_prompt"],
    num_inference_steps=a["steps"], guidance_scale=a["guidance_scale"],
    width=cfg["size"][0], height=cfg["size"][1], num_images_per_prompt=1,
    generator=[torch.Generator("cpu").manual_seed(a["seed"])], output_type="pil",
).images[0]
t3 = time.perf_counter()
image.save(cfg["png"])
t4 = time.perf_counter()
warm = []
for _ in range(cfg.get("warm", 0)):  # more calls on the main thread, as a raw user would
    s = time.perf_counter()
    pipe(
        prompt=a["prompt"], negative_prompt=a["negative_prompt"],
        num_inference_steps=a["steps"], guidance_scale=a["guidance_scale"],
        width=cfg["size"][0], height=cfg["size"][1], num_images_per_prompt=1,
        generator=[torch.Generator("cpu").manual_seed(a["seed"])], output_type="pil",
    )
    warm.append((time.perf_counter() - s) * 1000)
print("RESULT " + json.dumps({
    "import_ms": (t1 - t0) * 1000, "load_ms": (t2 - t1) * 1000,
    "generate_ms": (t3 - t2) * 1000, "save_ms": (t4 - t3) * 1000,
    "first_image_ms": (t4 - t0) * 1000, "warm_ms": warm,
}))
"""


def child(code: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Run one fresh interpreter; returns (its RESULT json, whole process wall ms)."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        check=False,
    )
    wall = (time.perf_counter() - start) * 1000
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :]), wall
    raise RuntimeError(f"child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 2 if args.quick else 7
    info = c.print_machine()
    conn, label = c.model_connection(args)
    raw = c.placement(conn)  # model, device, dtype, threads for the raw children
    inputs = {
        "prompt": c.PROMPT,
        "negative_prompt": c.NEGATIVE,
        "aspect_ratio": "1:1",
        "steps": 20,
        "guidance_scale": 7.5,
        "batch_size": 1,
        "seed": 1234,
    }
    tmp = Path(tempfile.mkdtemp(prefix="imagenodes-bench-cold-"))
    host_res: list[dict[str, Any]] = []
    raw_res: list[dict[str, Any]] = []
    size: list[int] = []
    try:
        for i in range(reps):
            order = ("host", "raw") if i % 2 == 0 else ("raw", "host")
            for side in order:
                if side == "host":
                    cfg = {
                        "workspace": str(tmp / f"ws-{i}"),
                        "connection": conn,
                        "inputs": inputs,
                        "runs": 1,
                    }
                    res, wall = child(HOST_CHILD, cfg)
                    size = res["size"]
                    host_res.append({**res, "process_ms": wall})
                else:
                    cfg = {
                        **raw,
                        "inputs": inputs,
                        "size": size,
                        "png": str(tmp / f"raw-{i}.png"),
                    }
                    res, wall = child(RAW_CHILD, cfg)
                    raw_res.append({**res, "process_ms": wall})
        warm_child, _ = child(
            HOST_CHILD,
            {"workspace": str(tmp / "ws-warm"), "connection": conn, "inputs": inputs, "runs": 6},
        )
        raw_warm, _ = child(
            RAW_CHILD,
            {
                **raw,
                "inputs": inputs,
                "size": size,
                "png": str(tmp / "raw-warm.png"),
                "warm": 5,
            },
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def h(key: str) -> float:
        return c.median(r["runs"][0].get(key, 0.0) for r in host_res)

    h_import = c.median(r["import_ms"] for r in host_res)
    h_first = c.median(r["first_image_ms"] for r in host_res)
    h_store = c.median(
        r["runs"][0].get("encode_ms", 0.0) + r["runs"][0].get("store_ms", 0.0) for r in host_res
    )
    h_other = c.median(
        r["first_image_ms"]
        - r["import_ms"]
        - r["runs"][0]["load_ms"]
        - r["runs"][0]["generate_ms"]
        - r["runs"][0].get("encode_ms", 0.0)
        - r["runs"][0].get("store_ms", 0.0)
        for r in host_res
    )
    r_med = {
        k: c.median(r[k] for r in raw_res) for k, v in raw_res[0].items() if not isinstance(v, list)
    }
    first_ratio = h_first / r_med["first_image_ms"]
    proc_ratio = c.median(r["process_ms"] for r in host_res) / r_med["process_ms"]
    rows = [
        [
            "import",
            f"{h_import:.0f}",
            f"{r_med['import_ms']:.0f}",
            "host: imagenodes + Host(); raw: torch + diffusers",
        ],
        ["load", f"{h('load_ms'):.0f}", f"{r_med['load_ms']:.0f}", "host: + diffusers import"],
        ["first generation", f"{h('generate_ms'):.0f}", f"{r_med['generate_ms']:.0f}", ""],
        ["encode + store", f"{h_store:.1f}", f"{r_med['save_ms']:.1f}", "raw: image.save"],
        [
            "other",
            f"{h_other:.1f}",
            "–",
            "host: torch import (first engine use), validation, staging",
        ],
        [
            "time to first image",
            f"{h_first:.0f}",
            f"{r_med['first_image_ms']:.0f}",
            f"ratio {first_ratio:.3f}",
        ],
        [
            "whole process",
            f"{c.median(r['process_ms'] for r in host_res):.0f}",
            f"{r_med['process_ms']:.0f}",
            f"ratio {proc_ratio:.3f}",
        ],
    ]
    print(
        f"model: {label}; {size[0]}x{size[1]}, 20 steps, {c.describe_placement(raw)} "
        f"on both sides; {reps} interleaved "
        f"pairs of fresh processes; medians in ms"
    )
    print()
    print(c.table(["phase", "host ms", "raw ms", "note"], rows))

    runs = warm_child["runs"]
    second = runs[1]
    warm = c.median(x["wall_ms"] for x in runs[2:])
    second_ratio = second["wall_ms"] / warm
    loads_after_second = second["loads"]
    second_load = second["load_ms"]
    print()
    print(
        c.table(
            ["host runs in one process", "wall ms", "load_ms", "cache.loads after"],
            [
                [
                    "1st (cold)",
                    f"{runs[0]['wall_ms']:.0f}",
                    f"{runs[0]['load_ms']:.0f}",
                    runs[0]["loads"],
                ],
                ["2nd", f"{second['wall_ms']:.1f}", f"{second_load:.2f}", loads_after_second],
                [
                    "3rd–6th (median)",
                    f"{warm:.1f}",
                    f"{c.median(x['load_ms'] for x in runs[2:]):.2f}",
                    runs[-1]["loads"],
                ],
            ],
        )
    )
    host_warm_gen = c.median(x["generate_ms"] for x in runs[2:])
    raw_warm_gen = c.median(raw_warm["warm_ms"][1:])
    print()
    print(
        f"warm generation, each side alone in its own process (host: node in a fresh worker "
        f"thread per run; raw: main thread): host {host_warm_gen:.1f} ms vs raw "
        f"{raw_warm_gen:.1f} ms = {host_warm_gen / raw_warm_gen:.3f}x (one process each: "
        f"a cross-process reading, noisier than the interleaved ones)"
    )
    c.dump(
        args.json,
        {
            "host": host_res,
            "raw": raw_res,
            "warm": warm_child,
            "raw_warm": raw_warm,
            "machine": info,
            "model": label,
        },
    )
    cold_ok = first_ratio <= TARGET
    warm_ok = loads_after_second == 1 and abs(second_ratio - 1) <= WARM_TOLERANCE
    print(
        f"SUMMARY: cold start [{c.verdict(cold_ok and warm_ok)}]: time to first image host "
        f"{h_first / 1000:.2f} s vs raw {r_med['first_image_ms'] / 1000:.2f} s = "
        f"{first_ratio:.3f}x (target <= {TARGET}) [{c.verdict(cold_ok)}], whole process "
        f"{proc_ratio:.3f}x; 2nd run = {second_ratio:.3f}x a warm run, cache.loads "
        f"{loads_after_second}, load_ms {second_load:.2f} [{c.verdict(warm_ok)}]"
    )


if __name__ == "__main__":
    main()
