"""Bounded thread pools for the HTTP layer's blocking calls.

``asyncio.to_thread`` runs every blocking call of every request on the loop's one
default executor: ``min(32, cores + 4)`` threads — 6 on a 2-core machine — shared by
store reads, upload decoding, file reads and catalog builds alike.  A handful of slow
uploads (a 50-megapixel image decodes for seconds) then holds every thread, and the
event streams, job views and readiness checks queue behind them although each of their
calls takes a millisecond.

So the service keeps two pools of its own, sized by the settings:

* ``read`` (``--read-threads``): short store reads — event streams and WebSocket
  look-ups, job views, the queue's counts for ``/v1/readyz``;
* ``work`` (``--work-threads``): the slow, CPU- or I/O-heavy calls — decoding and
  storing uploads, reading workspace files (possibly remote), flow preflights.

Slow work can then only wait for slow work; ``/v1/healthz`` needs no thread at all.
The pools belong to a :class:`~imagenodes.server.service.JobService` (made on first use
from its settings, shut down by its ``stop``), so routers reach them with the service
they already hold: ``await pools.read(service, service.job, job_id)``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from imagenodes.server.settings import ServerSettings

__all__ = ["Pools", "close", "of", "read", "work"]

P = ParamSpec("P")
T = TypeVar("T")


class JobService(Protocol):
    """What the pools need of a :class:`~imagenodes.server.service.JobService` (named
    structurally: the service imports this module, so it cannot import the service)."""

    @property
    def settings(self) -> ServerSettings: ...


class Pools:
    """The two executors of one service (threads start lazily, on first use)."""

    def __init__(self, read_threads: int, work_threads: int) -> None:
        self.read = ThreadPoolExecutor(read_threads, thread_name_prefix="imagenodes-read")
        self.work = ThreadPoolExecutor(work_threads, thread_name_prefix="imagenodes-work")

    def close(self) -> None:
        """Stop the threads once their current call returns; queued calls are dropped
        (their requests are gone with the server)."""
        for pool in (self.read, self.work):
            pool.shutdown(wait=False, cancel_futures=True)


_lock = threading.Lock()
_pools: weakref.WeakKeyDictionary[JobService, Pools] = weakref.WeakKeyDictionary()


def of(service: JobService) -> Pools:
    """The service's pools, made from its settings on first use."""
    with _lock:
        pools = _pools.get(service)
        if pools is None:
            settings = service.settings
            pools = _pools[service] = Pools(settings.read_threads, settings.work_threads)
        return pools


def close(service: JobService) -> None:
    """Shut the service's pools down (``JobService.stop``); a later call makes new ones."""
    with _lock:
        pools = _pools.pop(service, None)
    if pools is not None:
        pools.close()


async def _run(
    pool: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """``fn(*args, **kwargs)`` on ``pool``, in the caller's context (as ``to_thread``)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(pool, call)


async def read(service: JobService, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """A short store read on the service's ``read`` pool."""
    return await _run(of(service).read, fn, *args, **kwargs)


async def work(service: JobService, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Slow blocking work (decoding, file I/O) on the service's ``work`` pool."""
    return await _run(of(service).work, fn, *args, **kwargs)
