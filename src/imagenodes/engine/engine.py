"""The engine: routes a request to a family, gets the pipeline from the cache and runs it.

Nodes reach it only through their run context (``ctx.models``), which supplies
``control``: the object that receives progress events and raises when the run is
cancelled or out of time.  The engine is configured by plain
:class:`~imagenodes.engine.config.RuntimeConfig` records, never by connection
classes.  Checks happen before the load, while waiting for another thread's load,
and at every denoising step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from imagenodes.engine import notices as nc
from imagenodes.engine.aspect import fit_size
from imagenodes.engine.batching import Batcher, batch_key
from imagenodes.engine.cache import LOAD_LOCK, CacheEntry, PipelineCache
from imagenodes.engine.config import RuntimeConfig
from imagenodes.engine.device import (
    PRECISION_ALIASES,
    cpu_threads,
    pick_device,
    pick_dtype,
    tune_cpu_malloc,
)
from imagenodes.engine.job import (
    IMAGE_TO_IMAGE,
    INSTRUCT_EDIT,
    TEXT_TO_IMAGE,
    Generation,
    ImageJob,
)
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import ModelProfile
from imagenodes.engine.prompts import fit_prompts
from imagenodes.engine.request import Control, GenerationRequest, draw_seed
from imagenodes.engine.resolve import ResolvedModel, check_spec, route
from imagenodes.engine.routing import Adapted, adapt
from imagenodes.engine.status import memory_status
from imagenodes.errors import ConnectionConfigError, GenerationFailed, ImageNodesError
from imagenodes.logs import quiet_libraries

# Importing the engine is where the ML stack comes in: from here on the libraries'
# advisories and warnings are log records under their own loggers, not stderr lines
# in the embedding application (imagenodes.logs).
quiet_libraries()


class _NullControl:
    def emit(self, type: str, **data: Any) -> None:
        pass

    def check(self) -> None:
        pass


#: Strength of the hires pass: low enough to keep what the model drew at its own size.
HIRES_STRENGTH = 0.3


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class Engine:
    """One per host: owns the pipeline cache and the registered model profiles."""

    def __init__(
        self, profiles: Mapping[str, ModelProfile], cache_bytes: int | None = None
    ) -> None:
        #: Routing results by (spec, models_dir, offline, forced profile): a lookup on
        #: the filesystem (or the hub cache) per generation would cost more than a step.
        self.profiles = dict(profiles)
        self.cache = PipelineCache(cache_bytes)
        self._routes: dict[tuple[Any, ...], ResolvedModel] = {}
        self._routes_lock = threading.Lock()
        #: Cross-request batching of concurrent compatible requests (off until enabled).
        self.batcher: Batcher | None = None
        #: Pipeline calls made, all requests together (benchmarks and tests).
        self.calls_made = 0
        self._calls_lock = threading.Lock()

    def enable_batching(self, window_ms: float, in_flight: Callable[[], int] | None = None) -> None:
        """Let concurrent compatible requests share calls (``window_ms`` ≤ 0 turns it off).

        See :mod:`imagenodes.engine.batching`; the service enables it with
        ``--batch-window-ms``.  ``in_flight`` counts the runs in flight on the caller's
        host, so a lone one starts without waiting for the window.
        """
        self.batcher = Batcher(window_ms / 1000, in_flight) if window_ms > 0 else None

    # -- routing --------------------------------------------------------------------
    def route(
        self, config: RuntimeConfig, model: str | None = None, *, field: str | None = None
    ) -> ResolvedModel:
        """The family and loadable source of ``model`` (default: the config's model).

        ``field`` says ``model`` is a caller's input (a node field, not the connection's
        own setting): unless the connection sets ``allow_model_paths`` it must be a
        family name, a hub id or a folder under ``models_dir``, and every other value
        gets one message naming ``field`` — the host's folders are not the caller's.
        """
        spec = model or config.model
        restricted = field is not None and model is not None and not config.allow_model_paths
        try:
            if restricted:
                check_spec(spec, self.profiles, config.models_dir)
            key = (spec, config.models_dir, config.offline, config.profile, restricted)
            with self._routes_lock:
                hit = self._routes.get(key)
            if hit is not None:
                return hit
            resolved = route(
                spec,
                self.profiles,
                models_dir=config.models_dir,
                offline=config.offline,
                token=config.token,
                forced_profile=config.profile,
                local_paths=not restricted,
            )
        except ConnectionConfigError as exc:
            if field is None or model is None:
                raise
            raise ConnectionConfigError(exc.message, field=field, details=exc.details) from None
        with self._routes_lock:
            self._routes[key] = resolved
        return resolved

    def placement(self, config: RuntimeConfig, precision: str | None) -> tuple[str, str]:
        device = pick_device(config.device)
        dtype = pick_dtype(precision or config.dtype, device)
        if device == "cpu":
            dtype = "float32" if precision else dtype
        return device, PRECISION_ALIASES.get(dtype, dtype)

    @staticmethod
    def threads_for(config: RuntimeConfig, profile: ModelProfile, device: str) -> int | None:
        """Intra-op threads asked for a pipeline call: the config's, else the family's.

        ``None`` off the CPU, and on the CPU when neither sets one (torch's default).
        """
        if device != "cpu":
            return None
        return config.cpu_threads or profile.cpu_threads

    # -- status ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "loaded": self.cache.status(),
            "bytes": self.cache.total_bytes(),
            "budget_bytes": self.cache.budget,
            "loads": self.cache.loads,
            "evictions": self.cache.evictions,
            "device": pick_device("auto"),
        }

    def model_status(
        self,
        config: RuntimeConfig | ConnectionConfigError,
        *,
        load: bool = False,
        control: Control | None = None,
    ) -> dict[str, Any]:
        """Is the config's model loaded for the placement a generation would use?

        A model that cannot be routed or loaded — or no usable configuration at all
        (``config`` is then the error) — is *reported* (``error``), not raised:
        answering that question is the point.  Cancellation still raises.
        """
        control = control or _NullControl()
        out: dict[str, Any] = {
            "model": None,
            "profile": None,
            "device": self.status()["device"],
            "dtype": None,
            "loaded": False,
            "load_ms": None,
            "error": None,
        }
        try:
            if isinstance(config, ConnectionConfigError):
                raise config
            resolved = self.route(config)
            out["model"], out["profile"] = resolved.display_name, resolved.profile.name
            device, dtype = self.placement(config, None)
            out["device"], out["dtype"] = device, dtype
            out["loaded"] = self.cache.has(resolved.source, dtype, device)
            if load and not out["loaded"]:
                start = time.perf_counter()
                entry, _ = self.cache.acquire(resolved, dtype, device, wait=control.check)
                self.cache.release(entry)
                out["load_ms"] = round((time.perf_counter() - start) * 1000, 1)
                out["loaded"] = True
        except ConnectionConfigError as exc:
            out["error"] = {"code": exc.code, "message": exc.message, "field": exc.field}
        status = self.status()
        out["loaded_models"] = status["loaded"]
        out["memory"] = memory_status(
            status["bytes"], status["budget_bytes"], out["device"] or status["device"]
        )
        return out

    def clear(self) -> None:
        self.cache.clear()

    # -- generation -----------------------------------------------------------------
    def generate(
        self,
        job: ImageJob,
        config: RuntimeConfig,
        *,
        control: Control | None = None,
    ) -> Generation:
        """Route, fit (one notice per change), load or reuse the pipeline, run, deliver."""
        control = control or _NullControl()
        control.check()
        t_route = time.perf_counter()
        resolved = self.route(config, job.model, field=job.model_field)
        route_ms = (time.perf_counter() - t_route) * 1000
        device, dtype = self.placement(config, job.precision)
        if device == "cpu":
            tune_cpu_malloc()  # before the load too: its buffers come from the same heap
        adapted = adapt(job, resolved.profile, device=device, size_policy=config.size_policy)
        effective, notices = adapted.request, adapted.notices
        seed = effective.seed if effective.seed is not None else draw_seed()
        effective.seed = seed
        if effective.seeds is None:
            effective.seeds = [seed + i for i in range(effective.num_images)]
        elif len(effective.seeds) != effective.num_images:
            raise GenerationFailed(
                f"{len(effective.seeds)} seeds given for {effective.num_images} images"
            )
        timings: dict[str, float] = {"route_ms": route_ms}

        t0 = time.perf_counter()
        control.emit("model.loading", model=resolved.display_name, profile=resolved.profile.name)
        entry, cached = self.cache.acquire(resolved, dtype, device, wait=control.check)
        try:
            timings["load_ms"] = (time.perf_counter() - t0) * 1000
            control.emit(
                "model.loaded",
                model=resolved.display_name,
                cached=cached,
                load_ms=round(timings["load_ms"], 1),
            )
            control.check()
            effective, prompt_notices = fit_prompts(entry.pipeline(effective.task), effective)
            notices.extend(prompt_notices)
            t1 = time.perf_counter()
            wanted = self.threads_for(config, resolved.profile, device)
            threads_used = cpu_threads(wanted) if device == "cpu" else nullcontext(None)
            limit = max(1, resolved.profile.max_images_per_call)
            key = batch_key(effective, entry.key) if self.batcher is not None else None
            with threads_used as threads:
                if self.batcher is not None and key is not None and effective.num_images < limit:
                    images = self.batcher.run(
                        key,
                        limit,
                        effective,
                        control,
                        lambda merged, shared: self._call(
                            entry, merged, 0, merged.num_images, shared
                        ),
                    )
                    calls, split_notices = 1, list[Notice]()
                else:
                    images, calls, split_notices = self._run_batches(
                        entry, effective, control, job.count_field
                    )
            method = None
            if adapted.deliver is not None:
                method = "lanczos"
                images = [im.resize(adapted.deliver, Image.Resampling.LANCZOS) for im in images]
                if config.upscale == "hires" and self._hires_applies(entry, effective, adapted):
                    t_hires = time.perf_counter()
                    images = self._hires(entry, effective, images, adapted.deliver, control)
                    timings["hires_ms"] = (time.perf_counter() - t_hires) * 1000
                    method = "hires"
                    notices = [
                        replace(
                            n,
                            reason=f"{n.reason}, then refined by an image-to-image pass at "
                            f"strength {HIRES_STRENGTH} (upscale = 'hires')",
                        )
                        if n.code == nc.SIZE_UPSCALED
                        else n
                        for n in notices
                    ]
            timings["generate_ms"] = (time.perf_counter() - t1) * 1000
        finally:
            self.cache.release(entry)
        notices.extend(split_notices)
        assert effective.seeds is not None  # set above; fit_prompts keeps them
        generated = (int(effective.width or 0), int(effective.height or 0))
        delivered = adapted.deliver or generated
        params = {
            **effective.params(),
            # PNG metadata and run.json: enough to re-make one image exactly.
            "size": {
                "generated": f"{generated[0]}x{generated[1]}",
                "delivered": f"{delivered[0]}x{delivered[1]}",
                "method": method,
                "policy": config.size_policy,
            },
        }
        if method == "hires":
            params["size"]["hires_strength"] = HIRES_STRENGTH
        return Generation(
            images=images,
            seeds=list(effective.seeds),
            params=params,
            model=resolved.info(),
            generated_size=(int(effective.width or 0), int(effective.height or 0)),
            notices=notices,
            timings=timings,
            pipeline_calls=calls,
            device=device,
            dtype=dtype,
            threads=threads,
        )

    @staticmethod
    def _hires_applies(entry: CacheEntry, req: GenerationRequest, adapted: Adapted) -> bool:
        """The hires pass runs on text-to-image output that was upscaled, where the
        family has an image-to-image pipeline (sharing the weights)."""
        assert adapted.deliver is not None
        grew = adapted.deliver[0] * adapted.deliver[1] > (req.width or 0) * (req.height or 0)
        return grew and req.task == TEXT_TO_IMAGE and IMAGE_TO_IMAGE in entry.model.profile.tasks

    def _hires(
        self,
        entry: CacheEntry,
        req: GenerationRequest,
        images: list[Image.Image],
        size: tuple[int, int],
        control: Control,
    ) -> list[Image.Image]:
        """A1111's "hires fix": re-denoise each upscaled image lightly at the delivered
        size (capped to the family's maximum), so detail is drawn rather than
        interpolated.  Same prompt and seed as the image; ``HIRES_STRENGTH`` keeps the
        composition the model drew at its own size."""
        profile = entry.model.profile
        w, h, _ = fit_size(*size, profile)
        out = []
        for index, image in enumerate(images):
            control.check()
            source = image if (w, h) == size else image.resize((w, h), Image.Resampling.LANCZOS)
            second = req.copy(
                task=IMAGE_TO_IMAGE,
                image=source,
                width=w,
                height=h,
                strength=HIRES_STRENGTH,
                # img2img denoises int(steps × strength) steps: at least one.
                steps=max(req.steps or 0, math.ceil(1 / HIRES_STRENGTH)),
            )
            (refined,) = self._call(entry, second, index, 1, control)
            if refined.size != size:
                refined = refined.resize(size, Image.Resampling.LANCZOS)
            out.append(refined)
        return out

    def _run_batches(
        self,
        entry: CacheEntry,
        req: GenerationRequest,
        control: Control,
        count_field: str = "batch_size",
    ) -> tuple[list[Image.Image], int, list[Notice]]:
        """Run in chunks of the family's per-call limit; halve a chunk on OOM."""
        limit = max(1, entry.model.profile.max_images_per_call)
        pending = [(i, min(limit, req.num_images - i)) for i in range(0, req.num_images, limit)]
        images: dict[int, Image.Image] = {}
        notices: list[Notice] = []
        calls = 0
        while pending:
            start, count = pending.pop(0)
            try:
                calls += 1
                out = self._call(entry, req, start, count, control)
            except ImageNodesError:
                raise
            except Exception as exc:
                if _is_oom(exc) and count > 1:
                    half = count // 2
                    notices.append(
                        Notice(
                            nc.BATCH_SPLIT,
                            count_field,
                            count,
                            half,
                            "out of memory; retrying the batch in halves",
                        )
                    )
                    pending[:0] = [(start, half), (start + half, count - half)]
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                raise GenerationFailed(
                    f"{entry.model.profile.title} failed to generate: {type(exc).__name__}: {exc}",
                    field=None,
                ) from exc
            for offset, image in enumerate(out):
                images[start + offset] = image
        return [images[i] for i in sorted(images)], calls, notices

    def _call(
        self, entry: CacheEntry, req: GenerationRequest, start: int, count: int, control: Control
    ) -> list[Image.Image]:
        pipe = entry.pipeline(req.task)
        profile = entry.model.profile
        assert req.seeds is not None
        # CPU generators: the same seed gives the same latents on every device.
        generators = [
            torch.Generator("cpu").manual_seed(s) for s in req.seeds[start : start + count]
        ]
        total_steps = req.steps or profile.default_steps
        started = time.perf_counter()

        def on_step(
            pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            total = int(getattr(pipeline, "_num_timesteps", 0) or total_steps)
            elapsed = time.perf_counter() - started
            done = step + 1
            control.emit(
                "node.progress",
                batch_index=start,
                batch_size=count,
                step=done,
                total=total,
                elapsed_s=round(elapsed, 3),
                eta_s=round(elapsed / done * (total - done), 3),
            )
            control.check()
            return kwargs

        per_image = isinstance(req.prompt, list)
        negative = req.negative_prompt
        if per_image and negative is not None:
            negative = (
                negative[start : start + count]
                if isinstance(negative, list)
                else [negative] * count
            )
        kwargs: dict[str, Any] = {
            "prompt": req.prompt[start : start + count] if per_image else req.prompt,
            "num_inference_steps": req.steps,
            "guidance_scale": req.guidance_scale,
            "num_images_per_prompt": 1 if per_image else count,
            "generator": generators,
            "callback_on_step_end": on_step,
            "output_type": "pil",
        }
        if "negative_prompt" in profile.supports and req.negative_prompt is not None:
            kwargs["negative_prompt"] = negative
        if "prompt_2" in profile.supports and req.prompt_2 is not None:
            kwargs["prompt_2"] = req.prompt_2
        if req.task in (IMAGE_TO_IMAGE, INSTRUCT_EDIT):
            if req.image is None:
                raise GenerationFailed(f"{req.task} needs a source image", field="source_image")
            # adapt() always sets the size; only GenerationRequest's own default is None.
            assert req.width is not None and req.height is not None
            kwargs["image"] = req.image.convert("RGB").resize(
                (req.width, req.height), Image.Resampling.LANCZOS
            )
            if req.task == IMAGE_TO_IMAGE:
                kwargs["strength"] = req.strength if req.strength is not None else 0.8
            else:
                kwargs["image_guidance_scale"] = (
                    req.image_guidance_scale if req.image_guidance_scale is not None else 1.5
                )
            if req.task == IMAGE_TO_IMAGE and profile.img2img_takes_size:
                kwargs["width"], kwargs["height"] = req.width, req.height
        else:
            kwargs["width"], kwargs["height"] = req.width, req.height
        with entry.lock:
            control.check()
            with self._calls_lock:
                self.calls_made += 1
            lora = self._apply_lora(pipe, req)
            try:
                result = pipe(**kwargs)
            finally:
                if lora:
                    pipe.unload_lora_weights()
        return list(result.images)

    @staticmethod
    def _apply_lora(pipe: Any, req: GenerationRequest) -> bool:
        if not req.lora_path:
            return False
        try:
            with LOAD_LOCK:
                pipe.load_lora_weights(req.lora_path, adapter_name="imagenodes_training")
            pipe.set_adapters(["imagenodes_training"], adapter_weights=[req.lora_scale])
        except Exception as exc:
            raise GenerationFailed(
                f"cannot apply the training at {req.lora_path}: {type(exc).__name__}: {exc}",
                field="trainingId",
            ) from exc
        return True
