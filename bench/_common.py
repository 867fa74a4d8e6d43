"""Shared plumbing of the benchmarks: model choice, machine facts, tables, statistics.

Why one helper module: every benchmark must answer "what does the host cost?" the same
way — the same model (the embedded default unless told otherwise), the same request
shape, the same raw ``pipe(...)`` kwargs the engine uses, and ratios taken inside one
run — so that the numbers of different scripts can be read side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO / "src" / "imagenodes" / "engine" / "embedded_model"
PROMPT = "a red circle on a blue background"
NEGATIVE = ""


# -- command line -------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark shares (``--quick``, ``--model``, ``--tiny``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    p.add_argument(
        "--model",
        default=None,
        help="diffusers folder to benchmark (default: the embedded model)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="build a tiny random SD model and use it with the embedded profile (64 px); "
        "for developing the scripts while the embedded model is not there",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="force a model profile for --model (e.g. embedded: 64 px sizes)",
    )
    p.add_argument("--json", default=None, help="also write the raw numbers to this file")
    return p


def model_connection(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(connection dict, label) for the model under test.

    The tiny model is forced onto the embedded profile so that ``aspect_ratio="1:1"``
    means 64×64, as on the embedded model; the request shapes then match.
    """
    if args.tiny:
        folder = tiny_model_dir("sd")
        return {"model": str(folder), "profile": "embedded"}, f"tiny-sd ({folder})"
    if args.model:
        conn: dict[str, Any] = {"model": str(Path(args.model).resolve())}
        if args.profile:
            conn["profile"] = args.profile
        return conn, str(args.model)
    if not (EMBEDDED_DIR / "model_index.json").is_file():
        sys.exit(f"the embedded model is not at {EMBEDDED_DIR} yet; pass --tiny or --model PATH")
    return {"model": str(EMBEDDED_DIR)}, "embedded (imagenodes/embedded-shapes)"


def tiny_model_dir(family: str = "sd", seed: int = 0) -> Path:
    """A tiny random model folder, built once per family and seed in the temp dir."""
    folder = Path(tempfile.gettempdir()) / f"imagenodes-bench-tiny-{family}-{seed}"
    if not (folder / "model_index.json").is_file():
        from imagenodes.testing.tiny_models import build_tiny_model

        build_tiny_model(family, folder, seed=seed)
    return folder


def training_running() -> bool:
    """True while the embedded model's training runs: numbers taken then are not final."""
    out = subprocess.run(
        ["pgrep", "-f", "train_embedded_model"], capture_output=True, text=True, check=False
    )
    return bool(out.stdout.strip())


# -- machine ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers were taken on (printed with every table)."""
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "training_running": training_running(),
    }


def print_machine() -> dict[str, Any]:
    info = machine()
    gpu = info["gpu"] or "none (CPU only)"
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"{info['memory_gib']} GiB RAM, GPU: {gpu}; python {info['python']}, "
        f"torch {info['torch']}, diffusers {info['diffusers']}"
    )
    if info["training_running"]:
        print("NOTE: the embedded model's training is running: these numbers are NOT final")
    return info


# -- statistics ---------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles: the spread printed next to medians."""
    if len(values) < 2:
        v = float(values[0])
        return v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``; returns (a, b, R²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return a, b, r2


# -- memory -------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size (VmRSS), not the peak: shows memory given back."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n: float) -> str:
    return f"{n / 1024**2:.1f}"


# -- output -------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into docs/performance.md)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def dump(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))


# -- the request both sides run -------------------------------------------------------------
def raw_kwargs(effective: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    """The kwargs ``Engine._call`` passes, rebuilt from a run's effective parameters.

    Generators are CPU generators seeded like the engine's (image i: seed + i), so both
    sides denoise the very same latents.  Built fresh per call (generators are consumed).
    """
    import torch

    n = count if count is not None else int(effective["num_images"])
    seeds = effective.get("seeds") or [int(effective["seed"]) + i for i in range(n)]
    kwargs: dict[str, Any] = {
        "prompt": effective["prompt"],
        "num_inference_steps": effective["steps"],
        "guidance_scale": effective["guidance_scale"],
        "num_images_per_prompt": n,
        "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[:n]],
        "output_type": "pil",
        "width": effective["width"],
        "height": effective["height"],
    }
    if effective.get("negative_prompt") is not None:
        kwargs["negative_prompt"] = effective["negative_prompt"]
    return kwargs


def in_fresh_thread(fn: Callable[[], T], threads: int | None = None) -> T:
    """Run ``fn`` in a new thread and return its result — how ``Host.run`` runs a node.

    Why the raw side must do the same: torch's CPU kernels run on libgomp (OpenMP), and
    every thread that has run a parallel region keeps its own worker pool for as long
    as it lives.  When libgomp manages more threads than there are CPUs, it switches
    *every* team to a "throttled" spin count, so each of the thousands of small
    parallel regions in a diffusion step sleeps and wakes through futexes.  On this
    2-core machine that makes the same pipeline call 2.5–2.8× slower.  The host's
    worker thread dies after each run (its pool with it), so the host never leaves a
    pool behind — but raw calls on the benchmark's main thread would keep one alive
    and slow every host run measured after them.  Raw calls in a fresh thread leave
    nothing behind either, so both sides run with exactly one pool alive.

    ``threads``: the intra-op thread count the engine used for the same request (its
    profile's ``cpu_threads``), so that both sides also run on the same number of cores.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        from imagenodes.engine.device import cpu_threads

        try:
            with cpu_threads(threads):
                box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=work, name="bench-raw")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def placement(conn: dict[str, Any]) -> dict[str, Any]:
    """Model, device, dtype and CPU threads the engine uses for this connection.

    Raw children load and call the pipeline with exactly these, so both sides run the
    same weights on the same device with the same intra-op thread count.
    """
    from imagenodes.connections.local import LocalDiffusersConnection
    from imagenodes.engine.engine import Engine
    from imagenodes.registry.builtin import BUILTIN_PROFILES
    from imagenodes.registry.runner import runtime_config

    config = runtime_config(LocalDiffusersConnection(**conn))
    engine = Engine({p.name: p for p in BUILTIN_PROFILES})
    device, dtype = engine.placement(config, None)
    profile = engine.route(config).profile
    threads = engine.threads_for(config, profile, device)
    return {"model": conn["model"], "device": device, "dtype": dtype, "threads": threads}


def describe_placement(placed: dict[str, Any]) -> str:
    """'cpu float32, 1 thread(s)' — how the header lines of the tables name a placement."""
    threads = placed["threads"] if placed["threads"] is not None else "default"
    return f"{placed['device']} {placed['dtype']}, {threads} thread(s)"


def cached_pipeline(host: Any) -> Any:
    """The pipeline object the host's cache holds (after one warm-up run)."""
    entries = list(host.engine.cache._entries.values())
    if len(entries) != 1:
        raise RuntimeError(f"expected one cached model, found {len(entries)}")
    return entries[0].base
