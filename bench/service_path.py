"""Benchmark — one job's path through the service: database writes, overhead, a free loop.

Three measurements of ``imagenodes serve``'s app (uvicorn on 127.0.0.1 in this
process, the embedded model, 20-step 64x64 jobs), each printed as a ratio or a count
measured in this one run:

1. **Database writes per job**: write transactions that changed a row of the SQLite
   queue (counted around the store's ``_tx`` by ``total_changes``, so it reads the same
   on any release), per 20-step job after a warm-up job.
2. **Service overhead**: a job submitted with ``Prefer: wait`` (HTTP, queue, worker,
   events, store) against ``Host.run`` of the same inputs on the same host — the same
   warm pipeline — in interleaved pairs whose order alternates; the median of per-pair
   ratios.  Target: ≤ 5 % of a 20-step embedded job.
3. **A loop that never blocks**: ``GET /v1/healthz`` latency (p50 / p99 / max) while 50
   SSE followers follow 16 running jobs, with the server's default settings.  Target:
   p99 < 50 ms on the 2-core machine.

It runs against whichever ``imagenodes`` is importable, so an older release can be
measured the same way (``PYTHONPATH=/tmp/old/src python bench/service_path.py``).

Run: ``python bench/service_path.py [--pairs N] [--jobs 16] [--followers 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

INPUTS = {
    "prompt": "a red circle on a blue background",
    "negative_prompt": "",
    "aspect_ratio": "1:1",
    "steps": 20,
}


class WriteCounter:
    """Counts the SQLite store's write transactions that changed something."""

    def __init__(self) -> None:
        from imagenodes.server.store import SQLiteJobStore

        self.count = 0
        real = SQLiteJobStore._tx
        counter = self

        @contextmanager
        def counted(store: Any) -> Iterator[Any]:
            before = store._db.total_changes
            with real(store) as cur:
                yield cur
            if store._db.total_changes != before:
                counter.count += 1

        SQLiteJobStore._tx = counted  # type: ignore[method-assign,assignment]


@contextmanager
def served(root: Path, **options: Any) -> Iterator[tuple[str, Any]]:
    import uvicorn

    from imagenodes import Host
    from imagenodes.server import ServerSettings, create_app

    host = Host(root / "ws")
    app = create_app(host, ServerSettings(port=0, state_dir=root / "state", **options))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", host
    finally:
        server.should_exit = True
        thread.join(30)


def job(client: httpx.Client, seed: int) -> dict[str, Any]:
    r = client.post(
        "/v1/jobs",
        json={"node": "generate_image_v2", "inputs": {**INPUTS, "seed": seed}},
        headers={"Prefer": "wait=120"},
    )
    out: dict[str, Any] = r.json()
    assert out["status"] == "succeeded", out
    return out


WRITES_TARGET = 8  # database writes per 20-step job
OVERHEAD_TARGET = 1.05  # median service / Host.run
P99_TARGET_MS = 50.0  # /v1/healthz under 50 followers and 16 jobs


def writes_and_overhead(pairs: int, counter: WriteCounter) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp), workers=1) as (url, host):
        with httpx.Client(base_url=url, timeout=120) as client:
            job(client, 0)  # warm: the pipeline is loaded and cached
            host.run("generate_image_v2", {**INPUTS, "seed": 0})
            before = counter.count
            n = 3
            for seed in range(1, n + 1):
                job(client, seed)
            writes = (counter.count - before) / n
            print(f"database writes per 20-step job: {writes:.1f}")
            ratios, served_s, direct_s = [], [], []
            for i in range(pairs):
                order = ("service", "host") if i % 2 == 0 else ("host", "service")
                times = {}
                for side in order:
                    t0 = time.perf_counter()
                    if side == "service":
                        job(client, 100 + i)
                    else:
                        host.run("generate_image_v2", {**INPUTS, "seed": 100 + i})
                    times[side] = time.perf_counter() - t0
                ratios.append(times["service"] / times["host"])
                served_s.append(times["service"])
                direct_s.append(times["host"])
            med = statistics.median(ratios)
            print(
                f"service overhead: median service/Host.run = {med:.3f} "
                f"({(med - 1) * 100:+.1f} %; service {statistics.median(served_s) * 1000:.0f} ms,"
                f" Host.run {statistics.median(direct_s) * 1000:.0f} ms, {pairs} pairs)"
            )
            return writes, med


def loop_latency(jobs: int, followers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp)) as (url, _host):
        with httpx.Client(base_url=url, timeout=120) as client:
            job(client, 0)  # warm
            ids = [
                client.post(
                    "/v1/jobs",
                    json={"node": "generate_image_v2", "inputs": {**INPUTS, "seed": s}},
                ).json()["id"]
                for s in range(1, jobs + 1)
            ]

        async def load() -> list[float]:
            limits = httpx.Limits(max_connections=followers + 8)
            async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:

                async def follow(job_id: str) -> None:
                    async with c.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                        async for line in response.aiter_lines():
                            if line.startswith("event: job.completed"):
                                return

                tasks = [asyncio.create_task(follow(ids[i % jobs])) for i in range(followers)]
                await asyncio.sleep(0.2)
                latencies = []
                async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
                    while not all(t.done() for t in tasks):
                        t0 = time.perf_counter()
                        (await probe.get("/v1/healthz")).raise_for_status()
                        latencies.append((time.perf_counter() - t0) * 1000)
                        await asyncio.sleep(0.02)
                await asyncio.gather(*tasks)
                return latencies

        t0 = time.perf_counter()
        lat = sorted(asyncio.run(load()))
        took = time.perf_counter() - t0
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        print(
            f"/v1/healthz with {followers} SSE followers and {jobs} jobs "
            f"({len(lat)} probes over {took:.1f} s): p50 {p(0.5):.1f} ms, "
            f"p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms"
        )
        return p(0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--followers", type=int, default=50)
    args = parser.parse_args()
    import imagenodes

    print(f"imagenodes from {Path(imagenodes.__file__).parent} (python {sys.version.split()[0]})")
    counter = WriteCounter()
    writes, ratio = writes_and_overhead(args.pairs, counter)
    p99 = loop_latency(args.jobs, args.followers)
    rows = [
        (
            "database writes per 20-step job",
            f"≤ {WRITES_TARGET}",
            f"{writes:.1f}",
            writes <= WRITES_TARGET,
        ),
        (
            "service / Host.run, same warm pipeline",
            f"≤ {OVERHEAD_TARGET}",
            f"{ratio:.3f}",
            ratio <= OVERHEAD_TARGET,
        ),
        (
            f"/v1/healthz p99, {args.followers} followers, {args.jobs} jobs",
            f"< {P99_TARGET_MS:g} ms",
            f"{p99:.1f} ms",
            p99 < P99_TARGET_MS,
        ),
    ]
    print("\n| measure | target | measured | |\n|---|---|---|---|")
    for name, target, got, ok in rows:
        print(f"| {name} | {target} | {got} | {'PASS' if ok else 'MISS'} |")
    verdict = "PASS" if all(r[3] for r in rows) else "MISS"
    print(
        f"SUMMARY: service path {verdict}: {writes:.1f} writes/job, overhead "
        f"{(ratio - 1) * 100:+.1f} %, healthz p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
