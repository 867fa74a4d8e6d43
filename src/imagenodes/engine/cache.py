"""The pipeline cache: load each model once, share it across tasks, bound its memory.

Keyed by (model folder, dtype, device).  Image-to-image and instruction pipelines are
derived from the loaded base with ``from_pipe``, so they share every weight tensor:
switching task costs no load and no memory.  A byte budget (``IMAGENODES_CACHE_BYTES``)
bounds the resident weights; least-recently-used entries not in use are evicted.
Concurrent first requests for one key load it once (single flight): the others wait.
Each entry has a lock held around pipeline calls, because diffusers pipelines keep
per-call state (scheduler timesteps, LoRA adapters) on shared objects.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from imagenodes.engine.budget import budget_from_env
from imagenodes.engine.device import DTYPES
from imagenodes.engine.imports import gc_paused
from imagenodes.engine.resolve import ResolvedModel
from imagenodes.errors import ConnectionConfigError

Key = tuple[str, str, str]

#: Process-wide lock around weight loading.  diffusers/accelerate load through
#: ``init_empty_weights``, which patches ``torch.nn.Module`` globally: two loads in
#: two threads (two hosts, or a cancelled run's load still finishing) corrupt each
#: other with meta tensors.  Loads are rare; serialising them costs nothing warm.
LOAD_LOCK = threading.RLock()


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of all parameters and buffers of the pipeline's torch modules (deduplicated)."""
    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in [*component.parameters(), *component.buffers()]:
            ptr = tensor.data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += tensor.numel() * tensor.element_size()
    return total


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give the memory of evicted pipelines back to the OS (and the GPU's free pool).

    Dropping the cache's reference frees the tensors — but only to the allocator.
    glibc keeps freed blocks below its mmap threshold (which rises to 32 MiB after the
    first large free, so most weight tensors) in its heaps: measured with
    bench/memory.py, evicting a 19 MiB model of the embedded model's architecture
    lowered RSS by 0.8 MiB, i.e. the budget bounded the cache's accounting but not the
    process.  ``malloc_trim(0)`` returns the free heap pages (23 MiB there; ~4 ms, and
    only after an eviction, i.e. next to a model load).  No ``gc.collect()``: pipelines
    are freed by reference counting, and a full collection costs ~250 ms with torch and
    diffusers loaded.
    """
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class CacheEntry:
    key: Key
    model: ResolvedModel
    base: Any
    nbytes: int
    load_ms: float
    variants: dict[str, Any] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pipeline(self, task: str) -> Any:
        """The pipeline for ``task``, derived from the base with shared components."""
        if task in self.variants:
            return self.variants[task]
        import diffusers

        class_name = self.model.profile.pipelines[task]
        if type(self.base).__name__ == class_name:
            pipe = self.base
        else:
            cls = getattr(diffusers, class_name)
            pipe = cls.from_pipe(self.base, dtype=self.base.dtype)
            pipe.set_progress_bar_config(disable=True)
        self.variants[task] = pipe
        return pipe


class PipelineCache:
    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget = budget_from_env() if budget_bytes is None else budget_bytes
        self._entries: dict[Key, CacheEntry] = {}
        self._loading: dict[Key, threading.Event] = {}
        self._errors: dict[Key, BaseException] = {}
        self._lock = threading.Lock()
        self.loads = 0  # number of from_pretrained calls, for tests and benchmarks
        self.evictions = 0

    # -- acquire / release ----------------------------------------------------------
    def acquire(
        self,
        model: ResolvedModel,
        dtype: str,
        device: str,
        *,
        on_load: Callable[[], None] | None = None,
        wait: Callable[[], None] | None = None,
    ) -> tuple[CacheEntry, bool]:
        """Get (and pin) the entry, loading it if needed; returns (entry, was_cached).

        ``wait`` is called while another thread loads the same key, so a cancelled or
        timed-out run stops waiting instead of blocking until the load ends.
        """
        key: Key = (model.source, dtype, device)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.users += 1
                    entry.last_used = time.monotonic()
                    return entry, True
                event = self._loading.get(key)
                if event is None:
                    event = threading.Event()
                    self._loading[key] = event
                    self._errors.pop(key, None)
                    break
            while not event.wait(0.05):
                if wait is not None:
                    wait()
            with self._lock:
                if key in self._errors:
                    raise self._errors[key]
        try:
            if wait is not None:
                wait()  # a run cancelled before its load starts never loads
            if on_load is not None:
                on_load()
            with LOAD_LOCK:
                entry = self._load(key, model, dtype, device)
        except BaseException as exc:
            with self._lock:
                self._errors[key] = exc
                del self._loading[key]
            event.set()
            raise
        with self._lock:
            entry.users += 1
            self._entries[key] = entry
            del self._loading[key]
            evicted = self._evict_over_budget(keep=key)
        event.set()
        if evicted:
            return_freed_memory()  # outside the lock: the evicted entries are gone now
        return entry, False

    def release(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.users = max(0, entry.users - 1)
            entry.last_used = time.monotonic()
            evicted = self._evict_over_budget()
        if evicted:
            return_freed_memory()

    def _load(self, key: Key, model: ResolvedModel, dtype: str, device: str) -> CacheEntry:
        # The first load imports diffusers, transformers and the pipeline's modules.
        with gc_paused():
            return self._load_pipeline(key, model, dtype, device)

    def _load_pipeline(self, key: Key, model: ResolvedModel, dtype: str, device: str) -> CacheEntry:
        import diffusers
        import transformers

        # Loading bars would interleave with the host's own progress events.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        start = time.perf_counter()
        base_class = model.profile.pipelines.get("text-to-image") or next(
            iter(model.profile.pipelines.values())
        )
        cls = getattr(diffusers, base_class, None) or diffusers.DiffusionPipeline
        try:
            pipe = cls.from_pretrained(model.source, dtype=DTYPES[dtype])
            pipe.to(device)
        except Exception as exc:
            raise ConnectionConfigError(
                f"cannot load model {model.spec!r} ({model.class_name}) as {base_class}: "
                f"{type(exc).__name__}: {exc}",
                field="model",
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        self.loads += 1
        ms = (time.perf_counter() - start) * 1000
        return CacheEntry(
            key,
            model,
            pipe,
            pipeline_bytes(pipe),
            ms,
            variants={base_class_task(model, type(pipe).__name__): pipe},
        )

    def _evict_over_budget(self, keep: Key | None = None) -> int:
        """Drop least-recently-used idle entries until within budget; returns how many."""
        evicted = 0
        total = sum(e.nbytes for e in self._entries.values())
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if total <= self.budget:
                break
            if entry.key == keep or entry.users > 0:
                continue
            del self._entries[entry.key]
            total -= entry.nbytes
            self.evictions += 1
            evicted += 1
        return evicted

    # -- reporting ------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "model": e.model.display_name,
                    "source": e.model.source,
                    "profile": e.model.profile.name,
                    "dtype": e.key[1],
                    "device": e.key[2],
                    "bytes": e.nbytes,
                    "tasks": sorted(e.variants),
                    "in_use": e.users,
                    "load_ms": round(e.load_ms, 1),
                }
                for e in sorted(self._entries.values(), key=lambda e: -e.last_used)
            ]

    def has(self, source: str, dtype: str, device: str) -> bool:
        """Is this model loaded for this placement (the next acquire costs no load)?"""
        with self._lock:
            return (source, dtype, device) in self._entries

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.users == 0]:
                del self._entries[key]
        return_freed_memory()


def base_class_task(model: ResolvedModel, class_name: str) -> str:
    for task, name in model.profile.pipelines.items():
        if name == class_name:
            return task
    return "text-to-image"
