"""Benchmark 3 — task switch: text-to-image, then image-to-image on the same model.

The promise under test (``engine/cache.py``): the image-to-image pipeline is derived from
the loaded text-to-image pipeline with ``from_pipe``, so switching task loads no weights
and adds no resident memory.  Measured in this process:

* ``cache.loads`` before and after the switch (must not move), and the run's ``load_ms``;
* which torch components the image-to-image pipeline shares with the base (``is``), and
  the bytes of any parameter/buffer whose storage is *not* the base's (must be 0);
* resident memory (VmRSS after ``gc.collect()``) at steady text-to-image, after the first
  and second image-to-image runs and after switching back — next to the RSS change of
  one more text-to-image run, which is the noise floor of this reading;
* the one-off cost of the switch: first image-to-image ``generate_ms`` minus the second
  (``from_pipe`` runs inside the first call);
* for comparison, the RSS growth of the same switch done with diffusers alone
  (``from_pipe`` + two image-to-image calls) in a fresh interpreter.

Run: ``python bench/task_switch.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

RSS_TARGET = 5 * 1024**2  # "a few MB"

#: The same sequence with diffusers alone, in a fresh interpreter: what the switch costs
#: without the host (module import of the img2img pipeline, first use of the VAE encoder).
RAW_CHILD = r"""
import gc, json, sys
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
cfg = json.loads(sys.argv[1])
def rss():
    gc.collect()
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
pipe = StableDiffusionPipeline.from_pretrained(cfg["model"], dtype=getattr(torch, cfg["dtype"]))
pipe.to(cfg["device"])
pipe.set_progress_bar_config(disable=True)
kw = {"prompt": cfg["prompt"], "negative_prompt": "", "num_inference_steps": cfg["steps"],
      "generator": torch.Generator("cpu").manual_seed(7)}
for _ in range(4):
    image = pipe(width=cfg["size"], height=cfg["size"], **kw).images[0]
before = rss()
i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe, dtype=pipe.dtype)
i2i.set_progress_bar_config(disable=True)
i2i(image=image, strength=0.8, **kw)
first = rss()
i2i(image=image, strength=0.8, **kw)
print("RESULT " + json.dumps({"first": first - before, "second": rss() - before}))
"""


def raw_switch(conn: dict[str, Any], steps: int, size: int) -> dict[str, int]:
    """RSS growth of the same switch done with diffusers alone (fresh process)."""
    device, dtype = c.placement(conn)
    cfg = {
        "model": conn["model"],
        "device": device,
        "dtype": dtype,
        "steps": steps,
        "size": size,
        "prompt": c.PROMPT,
    }
    out = subprocess.run(
        [sys.executable, "-c", RAW_CHILD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"raw child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")


def unshared_bytes(pipe: Any, base: Any) -> tuple[int, list[str], list[str]]:
    """Bytes of ``pipe``'s tensors not stored in ``base``; shared and own component names."""
    import torch

    base_ptrs = {
        t.data_ptr()
        for comp in base.components.values()
        if isinstance(comp, torch.nn.Module)
        for t in [*comp.parameters(), *comp.buffers()]
    }
    own = 0
    shared, separate = [], []
    for name, comp in pipe.components.items():
        if comp is None:
            continue
        (shared if comp is base.components.get(name) else separate).append(name)
        if isinstance(comp, torch.nn.Module):
            for t in [*comp.parameters(), *comp.buffers()]:
                if t.data_ptr() not in base_ptrs:
                    own += t.numel() * t.element_size()
    return own, shared, separate


def rss() -> int:
    gc.collect()
    return c.rss_bytes()


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    info = c.print_machine()
    conn, label = c.model_connection(args)
    steps = 5 if args.quick else 20

    from imagenodes import Host

    tmp = Path(tempfile.mkdtemp(prefix="imagenodes-bench-switch-"))
    try:
        host = Host(workspace=tmp / "workspace", connections={"default": conn})
        cache = host.engine.cache
        t2i = {
            "prompt": c.PROMPT,
            "negative_prompt": c.NEGATIVE,
            "aspect_ratio": "1:1",
            "steps": steps,
            "batch_size": 1,
            "seed": 7,
        }
        first = host.run("generate_image_v2", t2i)
        host.run("generate_image_v2", t2i)
        host.run("generate_image_v2", t2i)
        rss_t2i = rss()
        host.run("generate_image_v2", t2i)
        rss_t2i_again = rss()
        loads_before, bytes_before = cache.loads, cache.total_bytes()
        i2i = {
            "source_image": first.outputs["images"][0],
            "prompt": "a green circle on a blue background",
            "negative_prompt": c.NEGATIVE,
            "strength": 0.8,
            "steps": steps,
            "seed": 7,
        }
        sw1 = host.run("image_to_image", i2i)
        rss_i2i_1 = rss()
        sw2 = host.run("image_to_image", i2i)
        rss_i2i_2 = rss()
        back = host.run("generate_image_v2", t2i)
        rss_back = rss()
        loads_after, bytes_after = cache.loads, cache.total_bytes()
        entry = next(iter(cache._entries.values()))
        base = entry.base
        variant = entry.variants["image-to-image"]
        own, shared, separate = unshared_bytes(variant, base)
        weights = entry.nbytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    raw = raw_switch(conn, steps, first.effective[0]["width"])
    noise = rss_t2i_again - rss_t2i
    delta1 = rss_i2i_1 - rss_t2i_again
    delta2 = rss_i2i_2 - rss_t2i_again
    delta_back = rss_back - rss_t2i_again
    switch_ms = sw1.timings["generate_ms"] - sw2.timings["generate_ms"]
    print(
        f"model: {label}; weights {weights} bytes ({c.mib(weights)} MiB) per cache accounting; "
        f"{steps} steps, 1 image"
    )
    print(
        f"image-to-image pipeline {type(variant).__name__}: components shared with the "
        f"{type(base).__name__} base: {', '.join(sorted(shared))}; "
        f"separate: {', '.join(sorted(separate)) or 'none'}; tensor bytes not shared: {own}"
    )
    print()
    print(
        c.table(
            ["step", "VmRSS MiB", "Δ vs steady t2i (bytes)", "cache.loads", "load_ms"],
            [
                ["t2i steady", c.mib(rss_t2i), "", loads_before, ""],
                ["t2i once more (noise)", c.mib(rss_t2i_again), noise, loads_before, ""],
                [
                    "i2i 1st (switch)",
                    c.mib(rss_i2i_1),
                    delta1,
                    loads_after,
                    f"{sw1.timings['load_ms']:.2f}",
                ],
                ["i2i 2nd", c.mib(rss_i2i_2), delta2, loads_after, f"{sw2.timings['load_ms']:.2f}"],
                [
                    "t2i again (switch back)",
                    c.mib(rss_back),
                    delta_back,
                    loads_after,
                    f"{back.timings['load_ms']:.2f}",
                ],
                ["raw diffusers: i2i 1st (from_pipe)", "", raw["first"], "", ""],
                ["raw diffusers: i2i 2nd", "", raw["second"], "", ""],
            ],
        )
    )
    print()
    print(
        f"cache bytes before/after the switch: {bytes_before} / {bytes_after}; "
        f"i2i generate_ms 1st {sw1.timings['generate_ms']:.1f}, 2nd "
        f"{sw2.timings['generate_ms']:.1f} (one-off switch cost ≈ {switch_ms:.1f} ms)"
    )
    c.dump(
        args.json,
        {
            "machine": info,
            "model": label,
            "rss": [rss_t2i, rss_t2i_again, rss_i2i_1, rss_i2i_2, rss_back],
            "loads": [loads_before, loads_after],
            "unshared_bytes": own,
            "switch_ms": switch_ms,
            "raw_switch": raw,
        },
    )
    no_reload = loads_after == loads_before and bytes_after == bytes_before
    mem_ok = own == 0 and delta1 <= RSS_TARGET
    print(
        f"SUMMARY: task switch [{c.verdict(no_reload and mem_ok)}]: t2i -> i2i loads "
        f"{loads_before} -> {loads_after} (no reload: {c.verdict(no_reload)}), unshared tensor "
        f"bytes {own}, RSS +{delta1} bytes after the first i2i run ({c.mib(delta1)} MiB; "
        f"noise floor {noise} bytes; raw diffusers' own switch: +{raw['first']} bytes) vs "
        f"target <= {c.mib(RSS_TARGET)} MiB "
        f"[{c.verdict(mem_ok)}]; one-off switch cost {switch_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
