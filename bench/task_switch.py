"""Benchmark 3 — task switch: text-to-image, then image-to-image on the same model.

The promise under test (``engine/cache.py``): the image-to-image pipeline is derived from
the loaded text-to-image pipeline with ``from_pipe``, so switching task loads no weights
and adds no resident memory.  Each repetition is a fresh interpreter (host and raw
interleaved), because one RSS reading moves by a few MB with the allocator's mood;
the verdict uses medians.  The host child measures:

* ``cache.loads`` and the cache's bytes before and after the switch (must not move),
  and the switching run's ``load_ms``;
* which torch components the image-to-image pipeline shares with the base (``is``), and
  the bytes of any parameter/buffer whose storage is *not* the base's (must be 0);
* resident memory (VmRSS after ``gc.collect()``) at steady text-to-image (after four
  runs), after the first and second image-to-image runs and after switching back, next
  to the change over one more text-to-image run (the noise floor of one reading);
* the one-off cost of the switch: first image-to-image ``generate_ms`` minus the second
  (``from_pipe`` runs inside the first call).

The raw child does the same switch with diffusers alone (``from_pipe`` + two
image-to-image calls on the text-to-image output): what the switch costs without the
host (importing the img2img pipeline module, first use of the VAE encoder).

Run: ``python bench/task_switch.py [--quick] [--tiny | --model PATH]``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

RSS_TARGET = 5 * 1024**2  # "a few MB"

_RSS = r"""
import gc, json, sys
def rss():
    gc.collect()
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
cfg = json.loads(sys.argv[1])
"""

HOST_CHILD = (
    _RSS
    + r"""
import torch
from imagenodes import Host

def unshared_bytes(pipe, base):
    ptrs = {t.data_ptr() for m in base.components.values() if isinstance(m, torch.nn.Module)
            for t in [*m.parameters(), *m.buffers()]}
    own, shared, separate = 0, [], []
    for name, comp in pipe.components.items():
        if comp is None:
            continue
        (shared if comp is base.components.get(name) else separate).append(name)
        if isinstance(comp, torch.nn.Module):
            own += sum(t.numel() * t.element_size() for t in [*comp.parameters(), *comp.buffers()]
                       if t.data_ptr() not in ptrs)
    return own, sorted(shared), sorted(separate)

host = Host(workspace=cfg["workspace"], connections={"default": cfg["connection"]})
cache = host.engine.cache
t2i = {"prompt": cfg["prompt"], "negative_prompt": "", "aspect_ratio": "1:1",
       "steps": cfg["steps"], "batch_size": 1, "seed": 7}
first = host.run("generate_image_v2", t2i)
for _ in range(3):
    host.run("generate_image_v2", t2i)
rss_t2i = rss()
host.run("generate_image_v2", t2i)
rss_again = rss()
before = (cache.loads, cache.total_bytes())
i2i = {"source_image": first.outputs["images"][0], "prompt": "a green circle on a blue background",
       "negative_prompt": "", "strength": 0.8, "steps": cfg["steps"], "seed": 7}
sw1 = host.run("image_to_image", i2i)
rss_1 = rss()
sw2 = host.run("image_to_image", i2i)
rss_2 = rss()
back = host.run("generate_image_v2", t2i)
rss_back = rss()
entry = next(iter(cache._entries.values()))
own, shared, separate = unshared_bytes(entry.variants["image-to-image"], entry.base)
print("RESULT " + json.dumps({
    "noise": rss_again - rss_t2i, "first": rss_1 - rss_again, "second": rss_2 - rss_again,
    "back": rss_back - rss_again, "rss_t2i": rss_again,
    "loads": [before[0], cache.loads], "bytes": [before[1], cache.total_bytes()],
    "load_ms": [sw1.timings["load_ms"], sw2.timings["load_ms"], back.timings["load_ms"]],
    "switch_ms": sw1.timings["generate_ms"] - sw2.timings["generate_ms"],
    "unshared": own, "shared": shared, "separate": separate, "weights": entry.nbytes,
    "classes": [type(entry.base).__name__, type(entry.variants["image-to-image"]).__name__],
    "size": first.effective[0]["width"],
}))
"""
)

RAW_CHILD = (
    _RSS
    + r"""
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
if cfg.get("threads"):  # the engine's thread count for this model (its profile's)
    torch.set_num_threads(cfg["threads"])
pipe = StableDiffusionPipeline.from_pretrained(cfg["model"], dtype=getattr(torch, cfg["dtype"]))
pipe.to(cfg["device"])
pipe.set_progress_bar_config(disable=True)
kw = {"prompt": cfg["prompt"], "negative_prompt": "", "num_inference_steps": cfg["steps"]}
def gen():
    return [torch.Generator("cpu").manual_seed(7)]
for _ in range(4):
    image = pipe(width=cfg["size"], height=cfg["size"], generator=gen(), **kw).images[0]
rss_t2i = rss()
pipe(width=cfg["size"], height=cfg["size"], generator=gen(), **kw)
rss_again = rss()
i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe, dtype=pipe.dtype)
i2i.set_progress_bar_config(disable=True)
i2i(image=image, strength=0.8, generator=gen(), **kw)
rss_1 = rss()
i2i(image=image, strength=0.8, generator=gen(), **kw)
print("RESULT " + json.dumps({"noise": rss_again - rss_t2i, "first": rss_1 - rss_again,
                              "second": rss() - rss_again}))
"""
)


def child(code: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    reps = 2 if args.quick else 5
    steps = 5 if args.quick else 20
    info = c.print_machine()
    conn, label = c.model_connection(args)
    raw = c.placement(conn)  # model, device, dtype, threads for the raw children
    tmp = Path(tempfile.mkdtemp(prefix="imagenodes-bench-switch-"))
    hosts: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    try:
        for i in range(reps):
            for side in ("host", "raw") if i % 2 == 0 else ("raw", "host"):
                if side == "host":
                    cfg = {
                        "workspace": str(tmp / f"ws-{i}"),
                        "connection": conn,
                        "steps": steps,
                        "prompt": c.PROMPT,
                    }
                    hosts.append(child(HOST_CHILD, cfg))
                else:
                    cfg = {
                        **raw,
                        "steps": steps,
                        "prompt": c.PROMPT,
                        "size": hosts[0]["size"] if hosts else 64,
                    }
                    raws.append(child(RAW_CHILD, cfg))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return c.median(r[key] for r in rows)

    h0 = hosts[0]
    print(
        f"model: {label}; weights {h0['weights']} bytes ({c.mib(h0['weights'])} MiB) per cache "
        f"accounting; {h0['size']}x{h0['size']}, {steps} steps, 1 image, "
        f"{c.describe_placement(raw)}; {reps} fresh processes per side, interleaved; medians"
    )
    print(
        f"{h0['classes'][1]} shares with the {h0['classes'][0]} base: "
        f"{', '.join(h0['shared'])}; separate: {', '.join(h0['separate']) or 'none'}; "
        f"tensor bytes not shared: {max(h['unshared'] for h in hosts)}"
    )
    print()

    def delta(rows: list[dict[str, Any]], key: str) -> str:
        return f"{med(rows, key):+.0f}"

    def load_ms(i: int) -> str:
        return f"{c.median(h['load_ms'][i] for h in hosts):.2f}"

    new_loads = max(h["loads"][1] - h["loads"][0] for h in hosts)
    print(
        c.table(
            ["after", "host Δ RSS bytes", "raw Δ RSS bytes", "host new loads", "host load_ms"],
            [
                ["one more t2i run (noise)", delta(hosts, "noise"), delta(raws, "noise"), "", ""],
                [
                    "1st i2i (the switch)",
                    delta(hosts, "first"),
                    delta(raws, "first"),
                    new_loads,
                    load_ms(0),
                ],
                ["2nd i2i", delta(hosts, "second"), delta(raws, "second"), new_loads, load_ms(1)],
                ["t2i again (switch back)", delta(hosts, "back"), "", new_loads, load_ms(2)],
            ],
        )
    )
    host_first = med(hosts, "first")
    raw_first = med(raws, "first")
    switch_ms = med(hosts, "switch_ms")
    loads_moved = any(h["loads"][0] != h["loads"][1] for h in hosts)
    bytes_moved = any(h["bytes"][0] != h["bytes"][1] for h in hosts)
    unshared = max(h["unshared"] for h in hosts)
    print()
    print(
        f"Δ RSS is against steady text-to-image; host RSS there: {c.mib(med(hosts, 'rss_t2i'))} "
        f"MiB; cache bytes moved: {'YES' if bytes_moved else 'no'}; one-off switch cost "
        f"(1st − 2nd i2i generate_ms): {switch_ms:.1f} ms"
    )
    c.dump(args.json, {"machine": info, "model": label, "host": hosts, "raw": raws})
    no_reload = not loads_moved and not bytes_moved
    mem_ok = unshared == 0 and host_first <= RSS_TARGET
    print(
        f"SUMMARY: task switch [{c.verdict(no_reload and mem_ok)}]: t2i -> i2i new loads "
        f"{'YES' if loads_moved else '0'} [{c.verdict(no_reload)}]; unshared tensor bytes "
        f"{unshared}; RSS +{host_first:.0f} bytes ({c.mib(host_first)} MiB) after the first i2i "
        f"run vs raw diffusers' own +{raw_first:.0f} bytes ({c.mib(raw_first)} MiB), target "
        f"<= {c.mib(RSS_TARGET)} MiB [{c.verdict(mem_ok)}]; one-off switch cost "
        f"{switch_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
