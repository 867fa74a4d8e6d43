"""Cross-request batching: compatible generations from concurrent runs share one call.

ComfyUI, InvokeAI and A1111 run queue items one at a time.  A diffusion step on a batch
of 8 costs far less than 8 steps of 1 (one raw call of 8 embedded-model images is about
2.2x the throughput of 8 single calls), so when several runs ask the same pipeline for
the same size, steps, guidance and precision within a short window, the first one (the
*leader*) waits for others — until ``window_s`` passes without a new one, at most five
windows, and while the pipeline is busy with the previous batch — then runs one
pipeline call with every member's prompts and seeds and hands each its own images.
A leader that is the only run in flight on its host (``in_flight``), on an idle
pipeline, waits only 1 % of one image's time (``GRACE_SHARE``, measured on the previous
call of that key) for a second request — concurrent requests reach the pipeline a few
ms apart — so batching on by default costs a lone request at most 1 %.

Each member keeps its own prompt, seeds (per-image CPU generators, so its latents are
exactly those of a call of its own), progress events and cancellation: a member that is
cancelled mid-call stops receiving events and gets its CANCELLED error, the others go
on; only when every member is gone does the call itself stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from imagenodes.engine.request import Control, GenerationRequest
from imagenodes.errors import Cancelled, ImageNodesError

#: The share of one image's time a lone leader waits for company (see ``Batcher._lead``).
GRACE_SHARE = 0.01
#: The longest a leader waits for members, in windows (see ``Batcher._lead``).
MAX_WINDOWS = 5


@dataclass
class _Member:
    request: GenerationRequest
    control: Control
    offset: int = 0
    images: list[Image.Image] | None = None
    error: BaseException | None = None
    live: bool = True
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def count(self) -> int:
        return self.request.num_images


@dataclass
class _Batch:
    key: Hashable
    limit: int
    members: list[_Member] = field(default_factory=list)
    closed: bool = False
    last_join: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return sum(m.count for m in self.members)


def batch_key(req: GenerationRequest, entry_key: Hashable) -> Hashable | None:
    """What must be equal for two requests to share a call; None = not batchable.

    Text-to-image without a training only: an init image or an adapter is per request.
    """
    if req.image is not None or req.lora_path or req.task != "text-to-image":
        return None
    return (
        entry_key,
        req.task,
        req.width,
        req.height,
        req.steps,
        req.guidance_scale,
        req.prompt_2,
        req.precision,
        req.negative_prompt is None,
    )


def merge(members: list[_Member]) -> GenerationRequest:
    """One request holding every member's images: prompts and seeds per image."""
    prompts: list[str] = []
    negatives: list[str] = []
    seeds: list[int] = []
    for member in members:
        req = member.request
        member.offset = len(prompts)
        count = req.num_images
        prompts.extend(req.prompt if isinstance(req.prompt, list) else [req.prompt] * count)
        neg = req.negative_prompt
        negatives.extend(neg if isinstance(neg, list) else [neg or ""] * count)
        assert req.seeds is not None
        seeds.extend(req.seeds)
    first = members[0].request
    return first.copy(
        prompt=prompts,
        negative_prompt=negatives if first.negative_prompt is not None else None,
        num_images=len(prompts),
        seeds=seeds,
        seed=seeds[0],
    )


class _FanOut:
    """The control of a shared call: events to every live member, checks per member."""

    def __init__(self, members: list[_Member]) -> None:
        self.members = members

    def emit(self, type: str, **data: Any) -> None:
        for member in self.members:
            if not member.live:
                continue
            own = dict(data)
            if type == "node.progress":
                own["batch_index"], own["batch_size"] = 0, member.count
            try:
                member.control.emit(type, **own)
            except Exception as exc:  # one member's callback must not end the others
                member.error, member.live = exc, False

    def check(self) -> None:
        for member in self.members:
            if not member.live:
                continue
            try:
                member.control.check()
            except ImageNodesError as exc:
                member.error, member.live = exc, False
        if not any(m.live for m in self.members):
            raise Cancelled("every run sharing this batch was cancelled", field=None)


class Batcher:
    """Coalesces concurrent compatible requests (see the module docstring)."""

    def __init__(self, window_s: float, in_flight: Callable[[], int] | None = None) -> None:
        self.window_s = window_s
        #: How many runs are in flight on this engine's host right now (None: unknown).
        #: A leader that is the only one, on an idle pipeline, starts at once: a lone
        #: request never waits for a window it cannot fill.
        self.in_flight = in_flight
        self._lock = threading.Condition()
        self._open: dict[Hashable, _Batch] = {}
        #: Keys whose shared call is running: the next batch of that key stays open
        #: (and keeps collecting members) until the pipeline is free.
        self._busy: set[Hashable] = set()
        #: Seconds per image of the last shared call of each key: a lone leader waits a
        #: small share of it (``GRACE_SHARE``) for company.
        self._image_s: dict[Hashable, float] = {}
        #: Shared calls made and requests they served (tests and benchmarks).
        self.calls = 0
        self.members_served = 0

    def run(
        self,
        key: Hashable,
        limit: int,
        request: GenerationRequest,
        control: Control,
        call: Callable[[GenerationRequest, Control], list[Image.Image]],
    ) -> list[Image.Image]:
        """This request's images, from a call it leads or joins."""
        member = _Member(request, control)
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None or batch.closed or batch.size + member.count > limit
            if leader:
                batch = _Batch(key, limit)
                self._open[key] = batch
            assert batch is not None
            batch.members.append(member)
            batch.last_join = time.monotonic()
            self._lock.notify_all()
        if leader:
            self._lead(batch, call)
        else:
            member.done.wait()
        if member.error is not None:
            raise member.error
        assert member.images is not None
        return member.images

    def _lead(
        self, batch: _Batch, call: Callable[[GenerationRequest, Control], list[Image.Image]]
    ) -> None:
        # The window slides: it closes ``window_s`` after the *last* member joined (a
        # burst of requests arriving a few ms apart becomes one call), but never later
        # than MAX_WINDOWS windows after the first, so latency stays bounded.
        latest = time.monotonic() + MAX_WINDOWS * self.window_s
        with self._lock:
            alone = (
                self.in_flight is not None
                and self.in_flight() <= len(batch.members)
                and batch.key not in self._busy
            )
            if alone:
                # Requests sent together reach the pipeline a few ms apart: the first
                # waits GRACE_SHARE of one image's time (unknown before the first call:
                # no wait) for a second, so a burst still shares a call while a lone
                # request's latency rises by at most that share.
                grace = GRACE_SHARE * self._image_s.get(batch.key, 0.0)
                deadline = time.monotonic() + min(grace, MAX_WINDOWS * self.window_s)
                while len(batch.members) == 1 and (left := deadline - time.monotonic()) > 0:
                    self._lock.wait(left)
                alone = len(batch.members) == 1
            while not alone and batch.size < batch.limit:
                remaining = min(batch.last_join + self.window_s, latest) - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            # The pipeline runs one call at a time: while another batch of this key runs,
            # this one stays open, so everything that arrives meanwhile joins it.
            while batch.key in self._busy:
                if batch.size >= batch.limit and self._open.get(batch.key) is batch:
                    del self._open[batch.key]  # full: later arrivals start the next batch
                self._lock.wait(1.0)
            batch.closed = True
            self._busy.add(batch.key)
            if self._open.get(batch.key) is batch:
                del self._open[batch.key]
            members = list(batch.members)
        started = time.monotonic()
        try:
            images = call(merge(members), _FanOut(members))
            self._image_s[batch.key] = (time.monotonic() - started) / max(1, batch.size)
            for member in members:
                if member.error is None:
                    member.images = images[member.offset : member.offset + member.count]
        except BaseException as exc:
            for member in members:
                if member.error is None:
                    member.error = exc
        finally:
            with self._lock:
                self._busy.discard(batch.key)
                self.calls += 1
                self.members_served += len(members)
                self._lock.notify_all()
            for member in members:
                member.done.set()
