"""Plumbing of the peer benchmarks: one model in both systems, servers as processes, clients.

Why a module of its own: ``peer_comfyui.py`` (us against ComfyUI) and ``threads.py``
(where a served job loses time) must run *the same* work through the same servers and
follow it the same ways, or their numbers could not be read side by side.

* :func:`build_sd15` writes a random-weight model with SD1.5's architecture (one layer
  per UNet block, so that a CPU run takes seconds), CLIP ViT-L/14's text encoder, SD's
  VAE, ComfyUI's own CLIP tokenizer files, and an Euler scheduler with the linspace
  schedule (ComfyUI's ``euler`` + ``normal``).
* :func:`comfy_checkpoint` converts it to ComfyUI's single-file layout *with ComfyUI's
  own key maps*, has ComfyUI load it, and checks that every tensor ComfyUI holds equals
  the diffusers tensor it came from (and that none is left out).
* :class:`Server` starts ``imagenodes serve`` or ComfyUI as a child process on a free
  127.0.0.1 port, waits until it is ready, and reports its peak RSS.
* ``ours_job`` / ``comfy_job`` run one generation through a server's own protocol and
  fetch the PNG, as a builder would.

ComfyUI's runtime: a checkout of Comfy-Org/ComfyUI (``--comfyui PATH``) with a virtual
environment at ``PATH/.venv`` holding its ``requirements.txt``, with ``torch==2.13.0``
(CPU).  Two of its imports need care there: PyPI's torchvision wheel is a CUDA build
whose C ops fail to load against the CPU torch, and torchvision then dies registering a
fake kernel for ``torchvision::nms``; :data:`TORCHVISION_SHIM` defines the two op
schemas it needs just before torchvision is imported (ComfyUI's SD1.5 path never calls
them).  No torchaudio matches torch 2.13, so it is left out: ComfyUI then reports its
two audio node modules as ``IMPORT FAILED`` and runs everything else.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

PROMPT = "a red circle on a blue background"
SIZE = 128
STEPS = 10
CFG = 7.5
CKPT_NAME = "imagenodes-peer-sd15.safetensors"

#: Run in ComfyUI's interpreter before anything else: define torchvision's two custom op
#: schemas when (and only when) torchvision is imported, so that its fake-kernel
#: registrations find them although the CUDA-built C extension does not load.
TORCHVISION_SHIM = r"""
import importlib.abc, sys

class _TorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                try:
                    lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except RuntimeError:
                    pass  # the real extension loaded and defined it
            sys.modules.setdefault("_imagenodes_tv_lib", lib)  # keep the library alive
        return None

sys.meta_path.insert(0, _TorchvisionOps())
"""

#: ComfyUI's ``main.py`` under the shim, with the command line after ``--``.
COMFY_LAUNCH = (
    TORCHVISION_SHIM
    + r"""
import os, runpy
comfy = sys.argv[1]
sys.argv = [os.path.join(comfy, "main.py")] + sys.argv[2:]
sys.path.insert(0, comfy)
os.chdir(comfy)
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)

#: In ComfyUI's interpreter: diffusers folder -> single-file checkpoint, with ComfyUI's
#: key maps; then load it the way ComfyUI's CheckpointLoaderSimple does and compare.
COMFY_CONVERT = (
    TORCHVISION_SHIM
    + r"""
import json, os
comfy, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, comfy)
sys.argv = [sys.argv[0], "--cpu", "--fp32-text-enc"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
from safetensors.torch import load_file, save_file
import comfy.diffusers_convert, comfy.sd, comfy.utils

unet = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
vae = load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
te = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
cfg = json.load(open(os.path.join(folder, "unet", "config.json")))
levels = len(cfg["block_out_channels"])
per = cfg["layers_per_block"]
attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
unet_config = {
    "num_res_blocks": [per] * levels,
    "channel_mult": [c // cfg["block_out_channels"][0] for c in cfg["block_out_channels"]],
    "transformer_depth": [int(a) for a in attn for _ in range(per)],
    "transformer_depth_output": [int(a) for a in attn for _ in range(per + 1)],
    "transformer_depth_middle": 1,
}
unet_map = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key
ckpt = {}
unmapped = [k for k in unet if k not in unet_map]
for k, v in unet.items():
    if k in unet_map:
        ckpt["model.diffusion_model." + unet_map[k]] = v
ldm_vae = comfy.diffusers_convert.convert_vae_state_dict(vae)
for k, v in ldm_vae.items():
    ckpt["first_stage_model." + k] = v
for k, v in te.items():  # the original layout: transformer.text_model.*
    prefix = "" if k.startswith("text_model.") else "text_model."
    ckpt["cond_stage_model.transformer." + prefix + k] = v
if unmapped or len(ldm_vae) != len(vae) or len(ckpt) != len(unet) + len(vae) + len(te):
    raise SystemExit(f"key maps miss: {unmapped[:5]}, vae {len(ldm_vae)}/{len(vae)}")
save_file(ckpt, out)

loaded = comfy.sd.load_checkpoint_guess_config(out, output_vae=True, output_clip=True)
model, clip, vae_obj = loaded[:3]
held = {}
for prefix, part in (("model.diffusion_model.", model.model.diffusion_model),
                     ("first_stage_model.", vae_obj.first_stage_model)):
    held.update({prefix + k: v for k, v in part.state_dict().items()})
clip_sd = clip.cond_stage_model.state_dict()
held.update({"cond_stage_model.transformer." + k[len("clip_l.transformer."):]: v
             for k, v in clip_sd.items() if k.startswith("clip_l.transformer.")})
compared, differ, missing = 0, [], []
for key, value in ckpt.items():
    if key.endswith("position_ids"):
        continue
    got = held.get(key)
    if got is None:
        missing.append(key)
        continue
    compared += 1
    if got.shape != value.shape and got.numel() == value.numel():
        got = got.reshape(value.shape)  # ComfyUI keeps 1x1 convs of the VAE as linears or convs
    if got.dtype != value.dtype or not torch.equal(got.cpu(), value):
        differ.append(key)
print("RESULT " + json.dumps({
    "family": type(model.model.model_config).__name__,
    "tensors": len(ckpt), "compared": compared, "differ": differ[:10],
    "n_differ": len(differ), "missing": missing[:10], "n_missing": len(missing),
    "unet_dtype": str(model.model.get_dtype()),
}))
"""
)


# -- the model ------------------------------------------------------------------------------
def build_sd15(folder: Path, comfy_dir: Path, seed: int = 0) -> Path:
    """A random SD1.5-architecture diffusers folder (once; reused while it exists).

    ``imagenodes.testing.build_sd15_pipeline`` with one layer per UNet block, ComfyUI's
    tokenizer files (its config says 8192 tokens, as ComfyUI chunks prompts itself; SD's
    pipeline needs CLIP's 77) and Euler with the linspace schedule.
    """
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from imagenodes.testing import build_sd15_pipeline

    tokenizer = CLIPTokenizer.from_pretrained(
        str(comfy_dir / "comfy" / "sd1_tokenizer"), model_max_length=77
    )
    pipe = build_sd15_pipeline(torch.float32, seed=seed, layers_per_block=1, tokenizer=tokenizer)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="linspace"
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(folder)
    return folder


def comfy_python(comfy_dir: Path) -> str:
    """ComfyUI's interpreter: ``PATH/.venv/bin/python`` if it is there, else ours."""
    venv = comfy_dir / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def comfy_checkpoint(folder: Path, comfy_dir: Path, base: Path) -> dict[str, Any]:
    """Write ``base/models/checkpoints/<CKPT_NAME>`` and check ComfyUI loads our tensors."""
    out = base / "models" / "checkpoints" / CKPT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [comfy_python(comfy_dir), "-c", COMFY_CONVERT, str(comfy_dir), str(folder), str(out)],
        capture_output=True,
        text=True,
        env=child_env(threads=2),
        timeout=900,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"ComfyUI conversion failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    report: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    if report["n_differ"] or report["n_missing"] or report["family"] != "SD15":
        raise RuntimeError(f"ComfyUI does not hold our model: {report}")
    return report


# -- processes -------------------------------------------------------------------------------
def child_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of every process of a comparison: no stray thread settings."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS"):
        env.pop(key, None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss(pid: int) -> int:
    """The process's high-water resident set (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def minor_faults(pid: int) -> int:
    """Minor page faults the process has taken so far (all its threads)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A child process of a comparison (a server or the raw call): its pid and peak RSS."""

    proc: subprocess.Popen[Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss(self) -> int:
        return peak_rss(self.proc.pid)


class Server(Child):
    """One server as a child process on 127.0.0.1; ``kind`` is ``ours`` or ``comfy``."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        *,
        model: Path | None = None,
        comfy_dir: Path | None = None,
        args: tuple[str, ...] | None = None,
        env: dict[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        self.kind = kind
        self.label = label or kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = (workdir / f"{self.label.replace(' ', '_')}.log").open("ab")
        environ = child_env(**(env or {}))
        if args is None:  # defaults, the model loaded before "ready" as a user would warm it
            args = ("--preload",) if kind == "ours" else ()
        if kind == "ours":
            conns = workdir / "connections.toml"
            conns.write_text(
                f'[connections.default]\nmodel = "{model}"\ndevice = "cpu"\ndtype = "float32"\n'
            )
            environ["IMAGENODES_CONNECTIONS"] = str(conns)
            cmd = [
                sys.executable, "-c", "from imagenodes.cli import main; main()", "serve",
                "--port", str(self.port), "--workspace", str(workdir / "workspace"), *args,
            ]  # fmt: skip
        else:
            assert comfy_dir is not None
            for sub in ("custom_nodes", "input", "output", "temp", "user"):
                (workdir / sub).mkdir(exist_ok=True)
            cmd = [
                comfy_python(comfy_dir), "-c", COMFY_LAUNCH, str(comfy_dir),
                "--cpu", "--fp32-text-enc", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(workdir), "--disable-auto-launch", *args,
            ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=environ)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 600) -> None:
        path = "/v1/readyz" if self.kind == "ours" else "/system_stats"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited ({self.proc.returncode}); see {self.log.name}"
                )
            try:
                r = httpx.get(self.url + path, timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} did not become ready in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# -- one generation through each protocol ---------------------------------------------------------
def ours_body(seed: int) -> dict[str, Any]:
    return {
        "node": "generate_image",
        "inputs": {
            "prompt": PROMPT,
            "width": SIZE,
            "height": SIZE,
            "steps": STEPS,
            "guidance_scale": CFG,
            "seed": seed,
        },
    }


def ours_job(url: str, seed: int, follow: str = "wait") -> dict[str, float]:
    """POST one job, follow it (``wait`` | ``sse`` | ``ws`` | ``poll``), fetch its PNG.

    Returns ``{"latency": s, "generation": s}`` (the server's own generation time).
    """
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=900) as client:
        headers = {"Prefer": "wait=600"} if follow == "wait" else {}
        r = client.post("/v1/jobs", json=ours_body(seed), headers=headers)
        r.raise_for_status()
        job = r.json()
        if follow == "sse":
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
                for line in events.iter_lines():
                    if line.startswith("data:") and '"job.completed"' in line:
                        break
        elif follow == "ws":
            from websockets.sync.client import connect

            with connect(url.replace("http", "ws", 1) + "/v1/ws", max_size=None) as ws:
                ws.send(json.dumps({"subscribe": [job["id"]]}))
                while json.loads(ws.recv()).get("type") != "job.completed":
                    pass
        elif follow == "poll":
            while job.get("status") in ("queued", "running"):
                time.sleep(0.02)
                job = client.get(f"/v1/jobs/{job['id']}").json()
        if follow != "poll":
            job = client.get(f"/v1/jobs/{job['id']}").json()
        if job.get("status") != "succeeded":
            raise RuntimeError(f"job failed: {json.dumps(job)[:800]}")
        png = client.get(job["urls"][0])
        png.raise_for_status()
    latency = time.perf_counter() - start
    timings = job.get("timings") or {}
    return {"latency": latency, "generation": float(timings.get("generate_ms") or 0) / 1000}


def comfy_graph(seed: int) -> dict[str, Any]:
    """ComfyUI's API-format prompt for the same work."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": STEPS,
                "cfg": CFG,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "peer", "images": ["8", 0]},
        },
    }


def comfy_job(url: str, seed: int) -> dict[str, float]:
    """Queue one prompt on ComfyUI, follow it on its websocket, fetch the PNG via /view."""
    from websockets.sync.client import connect

    start = time.perf_counter()
    client_id = uuid.uuid4().hex
    with (
        connect(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", max_size=None) as ws,
        httpx.Client(base_url=url, timeout=900) as client,
    ):
        r = client.post("/prompt", json={"prompt": comfy_graph(seed), "client_id": client_id})
        r.raise_for_status()
        prompt_id = r.json()["prompt_id"]
        while True:
            msg = ws.recv()
            if isinstance(msg, bytes):
                continue  # preview frames
            event = json.loads(msg)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] == "execution_error":
                raise RuntimeError(f"ComfyUI failed: {json.dumps(data)[:800]}")
            if event["type"] == "executing" and data.get("node") is None:
                break  # sent after the history is stored (execution_success is before)
        history = client.get(f"/history/{prompt_id}").json()[prompt_id]
        image = history["outputs"]["9"]["images"][0]
        png = client.get("/view", params=image)
        png.raise_for_status()
    return {"latency": time.perf_counter() - start, "generation": 0.0}


def concurrent(fn: Any, url: str, seeds: list[int], **kw: Any) -> tuple[float, list[float]]:
    """Run one job per seed at once (threads); (wall s, per-job latencies)."""
    results: list[dict[str, float]] = [{} for _ in seeds]
    errors: list[BaseException] = []

    def one(i: int, seed: int) -> None:
        try:
            results[i] = fn(url, seed, **kw)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(seeds)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, [r["latency"] for r in results]


# -- the raw call ---------------------------------------------------------------------------------
#: A process that loads the pipeline and runs every call on its main thread (one OpenMP
#: pool, as a plain script has): a line ``seed[,seed…]`` in, the call's seconds out.
RAW_CHILD = r"""
import sys, time
import torch
from diffusers import StableDiffusionPipeline
folder, prompt = sys.argv[1], sys.argv[2]
steps, cfg, size = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
print("READY", flush=True)
for line in sys.stdin:
    seeds = [int(x) for x in line.split(",")]
    start = time.perf_counter()
    pipe(prompt=prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=cfg,
         width=size, height=size, num_images_per_prompt=len(seeds),
         generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
    print(f"{time.perf_counter() - start:.6f}", flush=True)
"""


#: The allocator settings the engine makes for CPU work (``engine.device.tune_cpu_malloc``
#: and ``THP_MEM_ALLOC_ENABLE``), as environment variables for a plain script's process.
TUNED_MALLOC_ENV = {
    "THP_MEM_ALLOC_ENABLE": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


class Raw(Child):
    """The same model as a plain diffusers pipeline, called in its own process.

    Why a process and not this one: the benchmark's own threads (clients, timers) then
    never share an interpreter or an OpenMP pool with the call, and the call runs on the
    thread that loaded the model — exactly what a hand-written script does.
    """

    def __init__(self, folder: Path, tuned: bool = False) -> None:
        args = [str(folder), PROMPT, str(STEPS), str(CFG), str(SIZE)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RAW_CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_env(**(TUNED_MALLOC_ENV if tuned else {})),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        if self._out.readline().strip() != "READY":
            raise RuntimeError("the raw pipeline process did not start")

    def call(self, seeds: list[int]) -> float:
        """One pipeline call making one image per seed; its seconds."""
        self._in.write(",".join(map(str, seeds)) + "\n")
        self._in.flush()
        return float(self._out.readline())

    def stop(self) -> None:
        self._in.close()
        self.proc.wait(30)


def default_model_dir() -> Path:
    return Path(tempfile.gettempdir()) / "imagenodes-bench-sd15-l1"
