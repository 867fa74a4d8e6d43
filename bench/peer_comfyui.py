"""Peer — imagenodes against ComfyUI on the same work, and both against the raw call.

One random-weight model with SD1.5's architecture (``_peers.build_sd15``: one layer per
UNet block, CLIP ViT-L/14, SD's VAE) is loaded by ComfyUI from a single-file checkpoint
made with ComfyUI's own key maps, and by ``imagenodes serve`` and a plain diffusers
pipeline from the diffusers folder — every tensor ComfyUI holds is checked equal to
ours first.  The work: 128×128, 10 steps, CFG 7.5, Euler with the linspace schedule
(ComfyUI's ``euler`` + ``normal``), fp32 on CPU, torch's threads (one per core) in every
process.

* ComfyUI: its HTTP ``/prompt``, its websocket to follow the prompt, ``/history`` and
  ``/view`` for the PNG (``--cpu --fp32-text-enc``).
* ``imagenodes serve`` with defaults: ``POST /v1/jobs`` with ``Prefer: wait``, then the
  PNG from ``/v1/files``.
* raw: ``pipe(...)`` in a process of its own (loaded and called on its main thread, as
  a plain script does), one call per request; for concurrent requests one call making
  all the images (the best a hand-written script could do).  Twice: as diffusers runs
  by default, and with the allocator settings the engine makes for CPU work
  (``_peers.TUNED_MALLOC_ENV``; docs/performance.md "Against ComfyUI" says why), so the
  ratios show both what a user's script gets and the like-for-like cost of the service.

Two settings, each over interleaved rounds (the order rotates): **alone** — one server
resident at a time, started for its turn and stopped after; **co-resident** — both
servers resident at once while each takes its turn (what a machine running both, or a
second service, looks like).  Per setting: one request, then N concurrent requests;
median wall seconds, ratio to raw, throughput, latency p50/p95, each server's peak RSS,
and each process's minor page faults per image.

Run: ``python bench/peer_comfyui.py --comfyui PATH [--rounds 3] [--concurrency 8]
[--quick] [--setting alone|co-resident|both]`` where PATH is a checkout of
Comfy-Org/ComfyUI with its requirements in ``PATH/.venv`` (see ``_peers.py`` and
docs/performance.md "Against ComfyUI").  Not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import _peers as p

TARGET_ALONE_ONE = 1.03  # one request through our service vs the raw call, alone
TARGET_MANY_RAW = 1.10  # N concurrent with defaults vs one raw call of N
TARGET_MANY_COMFY = 2.0  # our throughput vs ComfyUI's, N concurrent
TUNED = "raw+"  # the raw call with the engine's allocator settings
NAMES = ("raw", TUNED, "ComfyUI", "imagenodes")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Systems:
    """Starts, measures and stops the three systems; keeps every sample."""

    def __init__(
        self, args: argparse.Namespace, model: Path, work: Path, raws: dict[str, p.Raw]
    ) -> None:
        self.args = args
        self.model = model
        self.work = work
        self.raws = raws
        self.faults: dict[str, list[int]] = {}
        self.servers: dict[str, p.Server] = {}
        self.rss: dict[str, int] = {}
        self.one: dict[str, list[float]] = {}
        self.many: dict[str, list[float]] = {}
        self.lat: dict[str, list[float]] = {}
        self.seed = 1000

    def start(self, name: str) -> p.Server:
        if name == "ComfyUI":
            server = p.Server("comfy", self.work / "comfy", comfy_dir=self.args.comfyui)
            p.comfy_job(server.url, 1)  # loads the checkpoint, as a first user would
        else:
            server = p.Server("ours", self.work / "ours", model=self.model, label="imagenodes")
            p.concurrent(p.ours_job, server.url, [1, 2])  # first (batched) call warm
        self.servers[name] = server
        return server

    def stop(self, name: str) -> None:
        server = self.servers.pop(name)
        self.rss[name] = max(self.rss.get(name, 0), server.peak_rss())
        server.stop()

    def seeds(self, n: int) -> list[int]:
        self.seed += n
        return list(range(self.seed, self.seed + n))

    def measure(self, name: str) -> None:
        n = self.args.concurrency
        pid = self.raws[name].pid if name in self.raws else self.servers[name].pid
        before = p.minor_faults(pid)
        self._measure(name, n)
        images = self.args.singles + n
        self.faults.setdefault(name, []).append((p.minor_faults(pid) - before) // images)

    def _measure(self, name: str, n: int) -> None:
        if name in self.raws:
            raw = self.raws[name]
            for _ in range(self.args.singles):
                self.one.setdefault(name, []).append(raw.call(self.seeds(1)))
            self.many.setdefault(name, []).append(raw.call(self.seeds(n)))
            return
        url = self.servers[name].url
        job: Callable[..., dict[str, float]] = p.comfy_job if name == "ComfyUI" else p.ours_job
        for _ in range(self.args.singles):
            self.one.setdefault(name, []).append(job(url, self.seeds(1)[0])["latency"])
        wall, latencies = p.concurrent(job, url, self.seeds(n))
        self.many.setdefault(name, []).append(wall)
        self.lat.setdefault(name, []).extend(latencies)

    def table(self) -> tuple[str, dict[str, float]]:
        n = self.args.concurrency
        rows: list[list[Any]] = []
        ratios: dict[str, float] = {}
        for label, data in (("one request", self.one), (f"{n} concurrent", self.many)):
            for name in NAMES:
                if name not in data:
                    continue
                med = c.median(data[name])
                ratio = med / c.median(data["raw"])
                ratios[f"{label}/{name}"] = ratio
                ratios[f"{label}/{name} vs raw+"] = med / c.median(data[TUNED])
                lat = data[name] if label == "one request" else self.lat.get(name, [])
                what = {
                    "raw": "raw diffusers" if label == "one request" else f"raw, one call of {n}",
                    TUNED: "raw, engine's allocator settings"
                    if label == "one request"
                    else f"raw, one call of {n}, engine's allocator settings",
                    "ComfyUI": "ComfyUI",
                    "imagenodes": "imagenodes serve, defaults",
                }[name]
                served = lat and name not in self.raws
                rows.append(
                    [
                        f"{label}: {what}",
                        f"{med:.2f}",
                        f"{ratio:.2f}x",
                        f"{(1 if label == 'one request' else n) / med:.3f}",
                        f"{percentile(lat, 0.5):.2f}" if served else "n/a",
                        f"{percentile(lat, 0.95):.2f}" if served else "n/a",
                        c.mib(self.rss.get(name) or self.raws[name].peak_rss()),
                        f"{c.median(self.faults[name]) / 1000:.0f}k",
                    ]
                )
        head = ["", "median s", "vs raw", "images/s", "p50 s", "p95 s", "peak RSS MiB"]
        head.append("page faults per image")
        return c.table(head, rows), ratios


def run_setting(
    setting: str,
    args: argparse.Namespace,
    model: Path,
    raws: dict[str, p.Raw],
    work: Path,
    report: dict[str, Any],
) -> dict[str, float]:
    """One setting's rounds; ``work`` holds ComfyUI's base directory with the checkpoint
    (``report``: what ComfyUI was checked to hold) and our server's workspace."""
    systems = Systems(args, model, work, raws)
    names = list(NAMES)
    try:
        if setting == "co-resident":
            for name in ("ComfyUI", "imagenodes"):
                systems.start(name)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                alone = setting == "alone" and name not in raws
                if alone:
                    systems.start(name)
                try:
                    systems.measure(name)
                finally:
                    if alone:
                        systems.stop(name)
        for name in list(systems.servers):
            systems.stop(name)
    finally:
        for server in systems.servers.values():
            server.stop()
    text, ratios = systems.table()
    print(
        f"{setting}: {args.rounds} rounds, order rotated; "
        + ("one server resident at a time" if setting == "alone" else "both servers resident")
        + f"; ComfyUI holds our {report['compared']} tensors, all equal ({report['family']}, "
        f"{report['unet_dtype']})"
    )
    print()
    print(text)
    print()
    n = args.concurrency
    ours_tput = n / c.median(systems.many["imagenodes"])
    comfy_tput = n / c.median(systems.many["ComfyUI"])
    ratios["throughput/imagenodes:ComfyUI"] = ours_tput / comfy_tput
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="a checkout of Comfy-Org/ComfyUI")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests (default 8)")
    ap.add_argument("--singles", type=int, default=2, help="one-request samples per round")
    ap.add_argument("--setting", choices=["alone", "co-resident", "both"], default="both")
    ap.add_argument("--model-dir", type=Path, default=p.default_model_dir())
    ap.add_argument("--quick", action="store_true", help="one round, one single")
    ap.add_argument("--json", default=None, help="also write the ratios to this file")
    args = ap.parse_args()
    args.comfyui = args.comfyui.resolve()
    if args.quick:
        args.rounds, args.singles = 1, 1
    c.print_machine()
    model = p.build_sd15(args.model_dir, args.comfyui)
    print(
        f"model: random SD1.5 architecture, 1 layer per block ({model}); {p.SIZE}x{p.SIZE}, "
        f"{p.STEPS} steps, CFG {p.CFG}, Euler linspace; cpu float32; ComfyUI at {args.comfyui}"
    )
    print()
    raws = {"raw": p.Raw(model), TUNED: p.Raw(model, tuned=True)}
    for raw in raws.values():
        raw.call([0])  # warm
        raw.call(list(range(args.concurrency)))
    settings = ["alone", "co-resident"] if args.setting == "both" else [args.setting]
    work = Path(tempfile.mkdtemp(prefix="imagenodes-peer-"))
    try:
        report = p.comfy_checkpoint(model, args.comfyui, work / "comfy")  # once for both
        results = {s: run_setting(s, args, model, raws, work, report) for s in settings}
    finally:
        for raw in raws.values():
            raw.stop()
        shutil.rmtree(work, ignore_errors=True)
    c.dump(args.json, results)
    n = args.concurrency
    if "alone" in results:
        a = results["alone"]
        ok = (
            a["one request/imagenodes"] <= TARGET_ALONE_ONE
            and a[f"{n} concurrent/imagenodes"] <= TARGET_MANY_RAW
            and a["throughput/imagenodes:ComfyUI"] >= TARGET_MANY_COMFY
        )
        print(
            f"SUMMARY: peer, alone [{c.verdict(ok)}]: one request "
            f"{a['one request/imagenodes']:.2f}x raw (target <= {TARGET_ALONE_ONE}; "
            f"ComfyUI {a['one request/ComfyUI']:.2f}x); {n} "
            f"concurrent {a[f'{n} concurrent/imagenodes']:.2f}x one raw call of {n} (target <= "
            f"{TARGET_MANY_RAW}), {a['throughput/imagenodes:ComfyUI']:.2f}x ComfyUI's throughput "
            f"(target >= {TARGET_MANY_COMFY}); like for like (the raw call with the engine's "
            f"allocator settings): one request {a['one request/imagenodes vs raw+']:.2f}x, {n} "
            f"concurrent {a[f'{n} concurrent/imagenodes vs raw+']:.2f}x"
        )
    if "co-resident" in results:
        b = results["co-resident"]
        print(
            f"SUMMARY: peer, co-resident: one request {b['one request/imagenodes']:.2f}x raw "
            f"(ComfyUI {b['one request/ComfyUI']:.2f}x); {n} concurrent "
            f"{b[f'{n} concurrent/imagenodes']:.2f}x one raw call, "
            f"{b['throughput/imagenodes:ComfyUI']:.2f}x ComfyUI's throughput"
        )


if __name__ == "__main__":
    main()
