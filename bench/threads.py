"""Diagnostic — CPU threads: why the embedded model's profile runs it on one thread.

Not one of the six benchmarks of issue 6: it backs the engine's per-family
``cpu_threads`` choice with numbers.  Each configuration runs in its own fresh
process (OpenMP reads ``OMP_WAIT_POLICY`` once, at start-up) on the plain diffusers
pipeline, and the configurations are rotated over several rounds so that drift of a
shared machine hits them alike.  Reported: median ms per call and the ratio to one
thread on the calling thread.

Configurations:

* ``1 thread``: ``torch.set_num_threads(1)``, calls on the main thread.
* ``2 threads``: torch's default on a 2-core machine, calls on the main thread (one
  OpenMP pool alive).
* ``2 threads, 2 pools``: the main thread ran torch first (loading the model does),
  then each call runs in a fresh thread — how a host worker thread runs a node when
  the caller's thread has used torch.  libgomp then manages more threads than there
  are cores and throttles every team's spin-wait.
* ``2 threads, PASSIVE``: ``OMP_WAIT_POLICY=PASSIVE``: workers sleep at once instead
  of spinning, which survives CPU contention but pays a wake-up per parallel region.
* ``1 thread, 2 pools``: as "2 pools", with one thread — what the engine does for
  the embedded model.

Run: ``python bench/threads.py [--quick] [--tiny | --model PATH] [--batch N]``

``--served --comfyui PATH`` diagnoses a served job instead (issue 25: served jobs ran
20–35 % slower than the raw call).  On the peer model (``_peers.build_sd15``, 128×128,
10 steps) it times one job through ``imagenodes serve`` followed four ways — ``Prefer:
wait``, Server-Sent Events, the WebSocket, polling ``GET`` every 20 ms — and the raw call
in its own process, first with nothing else resident, then with an idle ComfyUI and an
idle second ``imagenodes serve`` resident; rounds interleaved.  Each row gives the
client's latency, the server's own generation time and the ratio to the raw call, and
the neighbours' CPU use while idle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import _common as c

CHILD = r"""
import json, os, statistics, sys, threading, time
cfg = json.loads(sys.argv[1])
import torch
from diffusers import StableDiffusionPipeline
torch.set_num_threads(cfg["threads"])
pipe = StableDiffusionPipeline.from_pretrained(cfg["model"], dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)

def call():
    start = time.perf_counter()
    pipe(prompt="a red circle on a blue background", negative_prompt="",
         num_inference_steps=20, guidance_scale=7.5, width=cfg["size"], height=cfg["size"],
         num_images_per_prompt=cfg["batch"],
         generator=[torch.Generator("cpu").manual_seed(i) for i in range(cfg["batch"])])
    return (time.perf_counter() - start) * 1000

def fresh():
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("ms", call()))
    t.start()
    t.join()
    return box["ms"]

run = fresh if cfg["fresh"] else call
times = [run() for _ in range(cfg["calls"] + 1)][1:]
print("RESULT " + json.dumps({"median_ms": statistics.median(times), "min_ms": min(times)}))
"""

CONFIGS: dict[str, dict[str, Any]] = {
    "1 thread": {"threads": 1, "fresh": False},
    "2 threads": {"threads": 2, "fresh": False},
    "2 threads, 2 pools": {"threads": 2, "fresh": True},
    "2 threads, PASSIVE": {"threads": 2, "fresh": False, "passive": True},
    "1 thread, 2 pools": {"threads": 1, "fresh": True},
}


def child(cfg: dict[str, Any]) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if cfg.get("passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]


FOLLOWS = ("wait", "sse", "ws", "poll")


def served(args: Any) -> None:
    """The served-job diagnostic (``--served``)."""
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import _peers as p

    comfy = Path(args.comfyui).resolve()
    model = p.build_sd15(p.default_model_dir(), comfy)
    work = Path(tempfile.mkdtemp(prefix="imagenodes-threads-served-"))
    rounds = 1 if args.quick else args.rounds
    lat: dict[str, list[float]] = {}
    gen: dict[str, list[float]] = {}
    idle_cpu: dict[str, float] = {}
    raw = p.Raw(model)
    ours = p.Server("ours", work / "ours", model=model, args=(*args.serve_arg, "--preload") or None)
    seed = 0
    neighbours: list[p.Server] = []
    try:
        raw.call([0])
        p.ours_job(ours.url, 0)
        for setting in ("alone", "neighbours"):
            if setting == "neighbours":
                p.comfy_checkpoint(model, comfy, work / "comfy")
                neighbours = [
                    p.Server("comfy", work / "comfy", comfy_dir=comfy, label="ComfyUI"),
                    p.Server("ours", work / "other", model=model, label="imagenodes (idle)"),
                ]
                p.comfy_job(neighbours[0].url, 0)  # resident with its model loaded, as in use
                p.ours_job(neighbours[1].url, 0)
                before = {n.label: p.cpu_seconds(n.pid) for n in neighbours}
                started = time.perf_counter()
            names = ["raw", *FOLLOWS]
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    seed += 1
                    key = f"{setting}: {name}"
                    if name == "raw":
                        lat.setdefault(key, []).append(raw.call([seed]))
                        continue
                    out = p.ours_job(ours.url, seed, follow=name)
                    lat.setdefault(key, []).append(out["latency"])
                    gen.setdefault(key, []).append(out["generation"])
            if neighbours:
                span = time.perf_counter() - started
                for n in neighbours:
                    idle_cpu[n.label] = (p.cpu_seconds(n.pid) - before[n.label]) / span
    finally:
        for server in (ours, *neighbours):
            server.stop()
        raw.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"model: random SD1.5 architecture, 1 layer per block; {p.SIZE}x{p.SIZE}, {p.STEPS} "
        f"steps, cpu float32, torch's threads; {rounds} rounds, order rotated; serve args: "
        f"{' '.join(args.serve_arg) or 'defaults'}"
    )
    print()
    rows = []
    for key, values in lat.items():
        setting = key.split(":")[0]
        base = c.median(lat[f"{setting}: raw"])
        g = gen.get(key)
        rows.append(
            [
                key,
                f"{c.median(values):.2f}",
                f"{c.median(g):.2f}" if g else "n/a",
                f"{c.median(values) / base:.2f}x",
                f"{c.median(g) / base:.2f}x" if g else "n/a",
            ]
        )
    print(c.table(["job", "latency s", "generation s", "latency/raw", "generation/raw"], rows))
    print()
    for label, share in idle_cpu.items():
        print(f"idle neighbour {label}: {share * 100:.1f} % of a core while resident")
    c.dump(args.json, {"latency": lat, "generation": gen, "idle_cpu": idle_cpu})
    sse = c.median(lat["neighbours: sse"]) / c.median(lat["alone: poll"])
    alone = c.median(lat["alone: wait"]) / c.median(lat["alone: raw"])
    print(
        f"SUMMARY: served job: alone {alone:.2f}x the raw call (target <= 1.03); followed by SSE "
        f"with neighbours {sse:.2f}x the same job alone and polled (target <= 1.05) "
        f"[{c.verdict(alone <= 1.03 and sse <= 1.05)}]"
    )


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--served", action="store_true", help="diagnose a served job (see above)")
    p.add_argument("--comfyui", default=None, help="with --served: a ComfyUI checkout")
    p.add_argument("--rounds", type=int, default=3, help="with --served: rounds (default 3)")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="with --served: an extra `imagenodes serve` argument (repeat)",
    )
    args = p.parse_args()
    if args.served:
        if not args.comfyui:
            p.error("--served needs --comfyui PATH")
        served(args)
        return
    c.print_machine()
    conn, label = c.model_connection(args)
    rounds, calls = (1, 3) if args.quick else (3, 6)
    size = 64
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(rounds):
        names = list(CONFIGS)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate the order
        for name in names:
            cfg = {
                **CONFIGS[name],
                "model": conn["model"],
                "size": size,
                "batch": args.batch,
                "calls": calls,
            }
            results[name].append(child(cfg)["median_ms"])
    print(
        f"model: {label}; {size}x{size}, 20 steps, CFG, {args.batch} image(s) per call, "
        f"cpu float32; {rounds} rounds x {calls} calls, each configuration in a fresh process"
    )
    print()
    base = c.median(results["1 thread"])
    rows = []
    for name, v in results.items():
        ms = c.median(v)
        rows.append([name, f"{ms:.0f}", f"{ms / args.batch:.0f}", f"{ms / base:.2f}x"])
    print(c.table(["configuration", "ms per call", "ms per image", "vs 1 thread"], rows))
    c.dump(args.json, {"results": results, "batch": args.batch, "model": label})
    two = c.median(results["2 threads"]) / base
    pools = c.median(results["2 threads, 2 pools"]) / base
    print(
        f"SUMMARY: threads: 2 threads = {two:.2f}x one thread with one pool, "
        f"{pools:.2f}x with two pools; one thread with two pools = "
        f"{c.median(results['1 thread, 2 pools']) / base:.2f}x"
    )


if __name__ == "__main__":
    main()
