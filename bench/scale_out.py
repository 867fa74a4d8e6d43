"""Benchmark 11 — scale-out on Ray: 1 vs 2 replicas, and what the Ray executor adds per job.

The service's executors (``imagenodes/server/service.py`` ``LocalExecutor``,
``imagenodes/server/ray_executor.py`` ``RayExecutor``) run the same single-image
``generate_image_v2`` job (1:1, 20 steps, guidance 7.5, the embedded model, one torch
thread per replica) on a local Ray instance (``ray.init(num_cpus=2)``, in a temp dir):

* **overhead**: the same jobs alternately on the local executor (``Host.run`` in this
  process) and on one Ray replica, one at a time, warm; the per-job overhead is the
  median of the paired differences (Ray wall − local wall) as a share of the local
  job.  Where it goes: the run's own timings (``run`` = its total: ``load`` /
  ``generate`` / ``encode`` / ``store`` …, measured where it ran) and *outside run*
  (wall − run), split into *dispatch* (the call until the replica has the job, by the
  wall clock both share on one machine) and *relay* (the rest: the streamed events —
  every step's progress event reaches the caller, checked — and the result back).
* **throughput**: 32 jobs (8 with ``--quick``) submitted by 2 client threads to a
  1-replica and to a 2-replica executor, warm; images per second of each, and their
  ratio.

Targets on the 2-core CPU box: 2 replicas ≥ 1.6× one replica; per-job overhead ≤ 5 %
of a 20-step job.  Images cross only as workspace references (a shared temp folder).

Run: ``python bench/scale_out.py [--quick] [--tiny | --model PATH]``  (the ray extra)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

STEPS = 20
TARGET_SPEEDUP, TARGET_OVERHEAD = 1.6, 0.05


def job_inputs(seed: int) -> dict[str, Any]:
    return {
        "prompt": c.PROMPT,
        "negative_prompt": c.NEGATIVE,
        "aspect_ratio": "1:1",
        "steps": STEPS,
        "guidance_scale": 7.5,
        "seed": seed,
    }


def run_job(executor: Any, seed: int) -> dict[str, Any]:
    """One job as the service's worker runs it (on the default connection: the model
    under test), with its wall time and event count."""
    from imagenodes.registry.context import CancelToken
    from imagenodes.server.executor import NodeRun

    events: list[str] = []
    called = time.time()  # wall clock, comparable with the replica's on one machine
    started = time.perf_counter()
    out = dict(
        executor.run(
            NodeRun("generate_image_v2", job_inputs(seed), os.urandom(16).hex()),
            on_event=lambda event: events.append(event.type),
            token=CancelToken(),
        )
    )
    out["wall_ms"] = (time.perf_counter() - started) * 1000
    out["steps_seen"] = events.count("step")
    # Call → the replica has the job (0 locally: the run starts in this process).
    out["dispatch_ms"] = max(0.0, (out.get("replica_received", called) - called) * 1000)
    return out


def throughput(executor: Any, jobs: int, offset: int) -> float:
    """Images per second of ``jobs`` jobs from 2 client threads (the service's workers)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: run_job(executor, s), range(offset, offset + jobs)))
    return jobs / (time.perf_counter() - started)


def main() -> None:
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    jobs = 8 if args.quick else 32
    pairs = 6 if args.quick else 24
    info = c.print_machine()
    conn, label = c.model_connection(args)

    import ray

    from imagenodes import Host
    from imagenodes.server.executor import LocalExecutor
    from imagenodes.server.ray_executor import RayExecutor

    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    os.environ.update(HOME=root, RAY_TMPDIR=root)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=root)
    workspace = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    # The model under test as a connections file: the replicas' hosts open the same one.
    toml = workspace / "connections.toml"
    lines = ["[connections.default]", 'type = "local_diffusers"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in conn.items()]
    toml.write_text("\n".join(lines) + "\n")
    host = Host(workspace / "ws", connections_file=toml)
    try:
        # The local executor: this process's host, one thread as the profile says.
        local = LocalExecutor(host)
        run_job(local, 0)  # warm
        one = RayExecutor(host, replicas=1, threads=1, connections_file=str(toml))
        one.start()
        run_job(one, 0)  # the replica loads its pipeline
        rows: list[dict[str, Any]] = []
        for i in range(pairs):
            a = run_job(local, 100 + i)
            b = run_job(one, 100 + i)
            rows.append({"local": a, "ray": b})
        per_local = c.median(r["local"]["wall_ms"] for r in rows)
        per_ray = c.median(r["ray"]["wall_ms"] for r in rows)
        overhead = c.median(r["ray"]["wall_ms"] - r["local"]["wall_ms"] for r in rows)
        share = overhead / per_local

        def part(side: str, key: str) -> float:
            return c.median(float(r[side]["timings"].get(key, 0.0)) for r in rows)

        def outside(side: str) -> float:
            return c.median(
                r[side]["wall_ms"] - float(r[side]["timings"]["total_ms"]) for r in rows
            )

        def dispatch(side: str) -> float:
            return c.median(r[side]["dispatch_ms"] for r in rows)

        assert all(r[side]["steps_seen"] == STEPS for r in rows for side in r), "lost events"

        breakdown = [
            [
                side,
                f"{c.median(r[side]['wall_ms'] for r in rows):.1f}",
                f"{part(side, 'total_ms'):.1f}",
                *(
                    f"{part(side, k):.1f}"
                    for k in ("load_ms", "generate_ms", "encode_ms", "store_ms")
                ),
                f"{outside(side):.1f}",
                f"{dispatch(side):.1f}",
                f"{outside(side) - dispatch(side):.1f}",
            ]
            for side in ("local", "ray")
        ]
        tp_serial = 1000 / per_ray  # one job at a time on the one replica
        tp_one = throughput(one, jobs, 1000)
        one.close()
        two = RayExecutor(host, replicas=2, threads=1, connections_file=str(toml))
        two.start()
        with ThreadPoolExecutor(2) as pool:  # both replicas load their pipelines
            list(pool.map(lambda s: run_job(two, s), (1, 2)))
        tp_two = throughput(two, jobs, 2000)
        two.close()
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)

    speedup = tp_two / tp_one
    print(f"model: {label}; {STEPS} steps, 1:1, one image per job, 1 torch thread per replica")
    print(f"\nper-job overhead ({pairs} alternating pairs, warm, one job at a time; ms, medians)\n")
    print(
        c.table(
            [
                "executor",
                "wall",
                "run",
                "load",
                "generate",
                "encode",
                "store",
                "outside run",
                "of it dispatch",
                "of it relay",
            ],
            breakdown,
        )
    )
    print(
        f"\nlocal {per_local:.1f} ms/job, Ray {per_ray:.1f} ms/job: overhead {overhead:+.1f} ms "
        f"= {share * 100:+.1f} % (median of paired differences)"
    )
    print(f"\nthroughput ({jobs} jobs from 2 client threads, warm)\n")
    print(
        c.table(
            ["Ray replicas", "images / s", "ratio"],
            [
                ["1, one job at a time (the pairs above)", f"{tp_serial:.2f}", "—"],
                ["1", f"{tp_one:.2f}", "1.00"],
                ["2", f"{tp_two:.2f}", f"{speedup:.2f}"],
            ],
        )
    )
    ok = speedup >= TARGET_SPEEDUP and share <= TARGET_OVERHEAD
    c.dump(
        args.json,
        {
            "machine": info,
            "model": label,
            "pairs": rows,
            "throughput": {"serial": tp_serial, "1": tp_one, "2": tp_two},
            "threads_alive": threading.active_count(),
        },
    )
    print(
        f"\nSUMMARY: scale out [{c.verdict(ok)}]: 2 Ray replicas {speedup:.2f}x the throughput "
        f"of 1 ({tp_two / tp_serial:.2f}x one replica's serial rate; target >= "
        f"{TARGET_SPEEDUP}); Ray executor overhead {overhead:+.1f} ms = "
        f"{share * 100:+.1f} % of a {per_local:.0f} ms {STEPS}-step job (target <= "
        f"{TARGET_OVERHEAD * 100:.0f} %)"
    )


if __name__ == "__main__":
    main()
