"""Benchmark 7 — service batching: 16 HTTP clients at once, each asking for one image.

The builder service (``imagenodes serve`` on uvicorn, 16 workers) gets 16 concurrent
``POST /v1/jobs`` (``Prefer: wait``) of one image each — same model, size, steps and
guidance, each its own seed — from 16 client threads, twice per repetition:

* ``batching on``: ``--batch-window-ms 20``: concurrent compatible jobs share pipeline
  calls (engine/batching.py) — the target row;
* ``batching off``: ``--batch-window-ms 0``: the same 16 jobs run one pipeline call
  each (they queue on the cached pipeline's lock);
* ``raw batched``: one raw diffusers call of 16 images on the same pipeline object.

Throughput is 16 images over the wall time from the first POST to the last answer
(end to end: HTTP, queue, events, PNG encode, local-disk commit), measured by the
clients, which run in a separate process (asyncio + httpx); latency is per client.
Targets: on/off >= 1.8x, on/raw >= 0.85x.

Then, with ``--levels`` (default ``1,2,8,16``), the same for each number of concurrent
requests, batching on (default window) against off: p50/p95 latency and throughput per
level.  Level 1 sends one request at a time (``LONE`` per repetition): batching on by
default must not delay a lone request (target: p50 on/off <= 1.02).

Run: ``python bench/service_batching.py [--quick] [--tiny | --model PATH] [--levels 1,2,8,16]``
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

N = 16
SEED = 500
TARGET_OFF, TARGET_RAW = 1.8, 0.85
TARGET_LONE = 1.02  # a lone request's p50 latency, batching on / off
LONE = 10  # lone requests per repetition at level 1


def serve(host: Any, state: Path, window_ms: float) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from imagenodes.server import ServerSettings, create_app

    settings = ServerSettings(port=0, state_dir=state, workers=N, batch_window_ms=window_ms)
    server = uvicorn.Server(
        uvicorn.Config(create_app(host, settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


#: The load generator: 16 concurrent clients in a separate process (asyncio + httpx), so
#: their Python work does not share the server's GIL, as real builder clients would not.
CLIENTS = """
import asyncio, json, sys, time
import httpx

url, n, seed, inputs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])

async def one(client, i):
    start = time.perf_counter()
    body = {"node": "generate_image_v2", "inputs": {**inputs, "seed": seed + i}}
    r = await client.post("/v1/jobs", headers={"Prefer": "wait=300"}, json=body)
    job = r.json()
    if job.get("status") != "succeeded":
        raise SystemExit(f"job failed: {job}")
    return time.perf_counter() - start

async def main():
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await client.get("/v1/healthz")  # connections warm, like a builder's open page
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(client, i) for i in range(n)))
        print(json.dumps({"wall": time.perf_counter() - start, "latencies": latencies}))

asyncio.run(main())
"""


def burst(url: str, inputs: dict[str, Any], n: int = N) -> tuple[float, list[float]]:
    """n concurrent one-image jobs from another process: (wall s, per-client latencies)."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", CLIENTS, url, str(n), str(SEED), json.dumps(inputs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return float(report["wall"]), [float(x) for x in report["latencies"]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--window-ms", type=float, default=20.0, help="batch window when on")
    p.add_argument(
        "--levels", default="1,2,8,16", help="concurrency levels for the latency table ('' = none)"
    )
    args = p.parse_args()
    reps = 1 if args.quick else 5
    steps = 5 if args.quick else 20
    info = c.print_machine()
    conn, label = c.model_connection(args)

    from imagenodes import Host

    tmp = Path(tempfile.mkdtemp(prefix="imagenodes-bench-service-"))
    try:
        host = Host(workspace=tmp / "workspace", connections={"default": conn})
        inputs = {
            "prompt": c.PROMPT,
            "negative_prompt": c.NEGATIVE,
            "aspect_ratio": "1:1",
            "steps": steps,
            "guidance_scale": 7.5,
        }
        warm = host.run("generate_image_v2", {**inputs, "batch_size": 8, "seed": SEED})
        pipe = c.cached_pipeline(host)
        eff = warm.effective[0]
        walls: dict[str, list[float]] = {"batching on": [], "batching off": [], "raw batched": []}
        latencies: dict[str, list[float]] = {"batching on": [], "batching off": []}
        calls: dict[str, list[int]] = {"batching on": [], "batching off": []}
        for rep in range(reps):
            order = (
                ["batching on", "batching off"] if rep % 2 == 0 else ["batching off", "batching on"]
            )
            for name in order:
                window = args.window_ms if name == "batching on" else 0.0
                server, thread, url = serve(host, tmp / f"state-{rep}-{window:g}", window)
                try:
                    before = host.engine.calls_made
                    wall, lat = burst(url, inputs)
                    calls[name].append(host.engine.calls_made - before)
                finally:
                    server.should_exit = True
                    thread.join(60)
                walls[name].append(wall)
                latencies[name].extend(lat)
            start = time.perf_counter()
            c.in_fresh_thread(
                lambda: pipe(**c.raw_kwargs({**eff, "num_images": N, "seed": SEED, "seeds": None})),
                eff.get("threads"),
            )
            walls["raw batched"].append(time.perf_counter() - start)
        level_rows = levels(host, tmp, inputs, args, reps) if args.levels else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    on_off = c.median(
        off / on for on, off in zip(walls["batching on"], walls["batching off"], strict=True)
    )
    on_raw = c.median(
        raw / on for on, raw in zip(walls["batching on"], walls["raw batched"], strict=True)
    )
    rows = []
    for name in walls:
        wall = c.median(walls[name])
        lat = latencies.get(name)
        rows.append(
            [
                name,
                f"{wall * 1000:.0f}",
                f"{N / wall:.2f}",
                f"{percentile(lat, 0.5) * 1000:.0f}" if lat else "n/a",
                f"{percentile(lat, 0.95) * 1000:.0f}" if lat else "n/a",
                f"{c.median(calls[name]):.0f}" if name in calls else "1",
            ]
        )
    print(
        f"model: {label}; {N} clients x 1 image {eff['width']}x{eff['height']}, {steps} steps, "
        f"{eff['device']} {eff['dtype']}, {eff.get('threads')} thread(s); {reps} repetitions, "
        "alternating order; 16 workers; local-disk workspace"
    )
    print()
    print(
        c.table(
            ["variant", "wall ms for 16", "images/s", "p50 ms", "p95 ms", "pipeline calls"], rows
        )
    )
    c.dump(args.json, {"machine": info, "model": label, "walls": walls, "latencies": latencies})
    ok = on_off >= TARGET_OFF and on_raw >= TARGET_RAW
    print(
        f"SUMMARY: service batching [{c.verdict(ok)}]: batching on {on_off:.2f}x the throughput "
        f"of batching off (target >= {TARGET_OFF}) and {on_raw:.2f}x one raw batched call of "
        f"{N} (target >= {TARGET_RAW}); p50/p95 latency {rows[0][3]}/{rows[0][4]} ms on, "
        f"{rows[1][3]}/{rows[1][4]} ms off"
    )

    if level_rows is not None:
        table, lone = level_rows
        print()
        print(table)
        print(
            f"SUMMARY: lone request [{c.verdict(lone <= TARGET_LONE)}]: p50 latency with "
            f"batching on {lone:.3f}x batching off (target <= {TARGET_LONE})"
        )


def levels(host: Any, tmp: Path, inputs: dict[str, Any], args: Any, reps: int) -> tuple[str, float]:
    """Latency and throughput per concurrency level, batching on against off."""
    counts = [int(x) for x in str(args.levels).split(",") if x.strip()]
    lat: dict[tuple[int, str], list[float]] = {}
    walls: dict[tuple[int, str], list[float]] = {}
    for rep in range(reps):
        for n in counts:
            order = ["on", "off"] if (rep + n) % 2 == 0 else ["off", "on"]
            for name in order:
                window = args.window_ms if name == "on" else 0.0
                server, thread, url = serve(host, tmp / f"levels-{rep}-{n}-{name}", window)
                try:
                    burst(url, inputs, 1)  # connections and the batcher's timing warm
                    for _ in range(LONE if n == 1 else 1):
                        wall, latencies = burst(url, inputs, n)
                        walls.setdefault((n, name), []).append(wall)
                        lat.setdefault((n, name), []).extend(latencies)
                finally:
                    server.should_exit = True
                    thread.join(60)
    rows = []
    for n in counts:
        row: list[Any] = [n]
        for name in ("on", "off"):
            values = lat[(n, name)]
            row += [
                f"{percentile(values, 0.5) * 1000:.0f}",
                f"{percentile(values, 0.95) * 1000:.0f}",
                f"{n / c.median(walls[(n, name)]):.2f}",
            ]
        row.append(f"{percentile(lat[(n, 'on')], 0.5) / percentile(lat[(n, 'off')], 0.5):.3f}x")
        rows.append(row)
    head = ["concurrent", "on p50 ms", "on p95 ms", "on images/s"]
    head += ["off p50 ms", "off p95 ms", "off images/s", "p50 on/off"]
    lone = percentile(lat[(1, "on")], 0.5) / percentile(lat[(1, "off")], 0.5) if 1 in counts else 0
    return c.table(head, rows), lone


if __name__ == "__main__":
    main()
