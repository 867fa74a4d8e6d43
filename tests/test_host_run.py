"""Host.run end to end on a real (tiny) diffusers pipeline: files, metadata, events,
reproducibility, concurrency, cancellation and timeouts."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from imagenodes import Cancelled, GenerationTimeout, Host, ImageNodesError
from imagenodes.workspace.png import read_png_metadata
from tests.helpers import load_ref, pixels, workspace_files

pytestmark = pytest.mark.slow  # every test generates on the tiny SD model

BASE = {
    "prompt": "a red circle on a blue background",
    "negative_prompt": "",
    "steps": 3,
    "aspect_ratio": "1:1",
}


def test_run_stores_pngs_with_metadata_and_run_json(tiny_host: Host) -> None:
    events = []
    result = tiny_host.run(
        "generate_image_v2", {**BASE, "batch_size": 2, "seed": 7}, on_event=events.append
    )
    images = result.outputs["images"]
    assert len(images) == 2 and all(ref.startswith("file://") for ref in images)
    assert result.seeds == [7, 8]
    assert all(f"runs/{result.run_id}/image-" in ref for ref in images)
    assert load_ref(tiny_host, images[0]).size == (64, 64)
    meta = read_png_metadata(tiny_host.workspace.read_bytes(images[1]))
    assert meta["prompt"] == BASE["prompt"] and meta["seed"] == "8"
    assert meta["steps"] == "3" and float(meta["guidance_scale"]) == 8.0
    assert meta["node"] == "generate_image_v2" and meta["node_version"] == "2.0.0"
    assert "tiny-sd" in meta["model"] and meta["negative_prompt"] == ""
    record = json.loads(tiny_host.workspace.read_bytes(result.run_json))
    assert record["inputs"]["prompt"] == BASE["prompt"]
    assert record["seeds"] == [7, 8] and record["effective"][0]["width"] == 64
    assert set(record["timings"]) == {"route_ms", "load_ms", "generate_ms", "encode_ms", "total_ms"}
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert types.index("model.loading") < types.index("model.loaded") < types.index("node.progress")
    steps = [e.data for e in events if e.type == "node.progress"]
    assert [s["step"] for s in steps] == [1, 2, 3] and steps[-1]["total"] == 3
    keys = {"batch_index", "batch_size", "step", "total", "fraction", "elapsed_s", "eta_s"}
    assert all(s.keys() == keys for s in steps)
    assert types.count("image.stored") == 2


def test_same_seed_is_pixel_identical_and_batch_images_reproduce_alone(tiny_host: Host) -> None:
    a = tiny_host.run("generate_image_v2", {**BASE, "batch_size": 3, "seed": 42})
    b = tiny_host.run("generate_image_v2", {**BASE, "batch_size": 3, "seed": 42})
    for ra, rb in zip(a.outputs["images"], b.outputs["images"], strict=True):
        assert np.array_equal(pixels(tiny_host, ra), pixels(tiny_host, rb))
    alone = tiny_host.run("generate_image_v2", {**BASE, "batch_size": 1, "seed": 44})
    # Image 2 of the batch used seed 42+2: alone it is the same image (batched matmuls
    # may differ in the last bit, so allow a sub-level tolerance).
    diff = np.abs(
        pixels(tiny_host, alone.outputs["images"][0]) - pixels(tiny_host, a.outputs["images"][2])
    )
    assert diff.mean() < 1.0
    other = tiny_host.run("generate_image_v2", {**BASE, "seed": 43})
    assert not np.array_equal(
        pixels(tiny_host, other.outputs["images"][0]), pixels(tiny_host, a.outputs["images"][0])
    )


def test_null_seed_draws_and_reports_a_32_bit_seed(tiny_host: Host) -> None:
    result = tiny_host.run("generate_image_v2", {**BASE, "seed": None})
    assert len(result.seeds) == 1 and 0 <= result.seeds[0] < 2**32


def test_default_aspect_is_the_seed_size_upscaled_with_a_notice(tiny_host: Host) -> None:
    inputs = {k: v for k, v in BASE.items() if k != "aspect_ratio"}
    result = tiny_host.run("generate_image_v2", {**inputs, "seed": 1, "steps": 2})
    notice = next(n for n in result.notices if n["code"] == "SIZE_UPSCALED")
    assert notice["requested"] == "576x1024" and notice["applied"] == "48x88 → 576x1024"
    assert load_ref(tiny_host, result.outputs["images"][0]).size == (576, 1024)


def test_concurrent_runs_do_not_interfere(tiny_host: Host) -> None:
    seeds = [100, 101, 102]
    sequential = {
        s: pixels(
            tiny_host, tiny_host.run("generate_image_v2", {**BASE, "seed": s}).outputs["images"][0]
        )
        for s in seeds
    }
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            r = tiny_host.run("generate_image_v2", {**BASE, "seed": seed})
            results[seed] = pixels(tiny_host, r.outputs["images"][0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in seeds:
        assert np.array_equal(results[s], sequential[s])


def test_arun_is_the_async_twin(tiny_host: Host) -> None:
    async def main() -> list:
        return await asyncio.gather(
            tiny_host.arun("generate_image_v2", {**BASE, "seed": 5}),
            tiny_host.arun("generate_image_v2", {**BASE, "seed": 6}),
        )

    a, b = asyncio.run(main())
    assert a.seeds == [5] and b.seeds == [6] and a.run_id != b.run_id


def test_cancel_at_a_step_stores_nothing(tiny_host: Host) -> None:
    def on_event(event) -> None:
        if event.type == "node.progress" and event.data["step"] == 2:
            assert tiny_host.cancel(event.run_id)

    with pytest.raises(Cancelled) as info:
        tiny_host.run(
            "generate_image_v2", {**BASE, "steps": 30, "batch_size": 2}, on_event=on_event
        )
    assert info.value.code == "CANCELLED"
    assert workspace_files(tiny_host) == []


def test_cancel_while_the_model_loads_returns_at_once(tiny_host: Host) -> None:
    events = []

    def on_event(event) -> None:
        events.append(event.type)
        if event.type == "model.loading":
            tiny_host.cancel(event.run_id)

    tiny_host.engine.clear()
    with pytest.raises(Cancelled):
        tiny_host.run("generate_image_v2", {**BASE, "seed": 1}, on_event=on_event)
    assert "node.progress" not in events and "run.cancelled" in events
    assert workspace_files(tiny_host) == []


def test_timeout_is_generation_timeout_and_stores_nothing(tiny_host: Host) -> None:
    import time

    def slow_consumer(event) -> None:
        if event.type == "node.progress":
            time.sleep(0.2)

    with pytest.raises(GenerationTimeout) as info:
        tiny_host.run(
            "generate_image_v2", {**BASE, "steps": 40}, on_event=slow_consumer, timeout=1.0
        )
    assert info.value.code == "GENERATION_TIMEOUT" and "1 s" in info.value.message
    assert workspace_files(tiny_host) == []


def test_out_of_memory_retries_the_batch_in_halves(tiny_host: Host, monkeypatch) -> None:
    import torch

    tiny_host.run("generate_image_v2", {**BASE, "seed": 1, "steps": 1})  # load it
    entry = next(iter(tiny_host.engine.cache._entries.values()))
    unet = entry.base.unet
    real_forward = unet.forward

    def forward(sample, *args, **kwargs):
        if sample.shape[0] > 4:  # CFG doubles the batch: more than 2 images "do not fit"
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    result = tiny_host.run("generate_image_v2", {**BASE, "seed": 3, "batch_size": 4})
    assert len(result.outputs["images"]) == 4 and result.seeds == [3, 4, 5, 6]
    splits = [n for n in result.notices if n["code"] == "BATCH_SPLIT"]
    assert [(n["requested"], n["applied"]) for n in splits] == [(4, 2)]  # one notice
    assert result.pipeline_calls == 3


def test_cpu_threads_come_from_the_connection_then_the_profile_and_are_put_back(
    tiny_host: Host, make_host, tiny_sd, workspace_dir
) -> None:
    import torch

    before = torch.get_num_threads()
    default = tiny_host.run("generate_image_v2", {**BASE, "seed": 1})
    record = json.loads(tiny_host.workspace.read_bytes(default.run_json))
    assert record["effective"][0]["threads"] == before  # tiny-sd profile: torch's default
    pinned = make_host(
        tiny_sd,
        workspace=workspace_dir / "pinned",
        tiny_profile=True,
        connections={"default": {"cpu_threads": 1}},
    )
    result = pinned.run("generate_image_v2", {**BASE, "seed": 1})
    record = json.loads(pinned.workspace.read_bytes(result.run_json))
    assert record["effective"][0]["threads"] == 1
    assert torch.get_num_threads() == before


def test_cpu_threads_out_of_range_is_a_connection_error(make_host, tiny_sd, workspace_dir) -> None:
    with pytest.raises(ImageNodesError) as err:
        make_host(
            tiny_sd,
            workspace=workspace_dir,
            tiny_profile=True,
            connections={"default": {"cpu_threads": 0}},
        )
    assert err.value.code == "CONNECTION_ERROR" and err.value.field == "cpu_threads"
    assert "greater than or equal to 1" in str(err.value)
    assert not workspace_dir.exists() or not any(workspace_dir.rglob("*.png"))


def test_the_callers_thread_sleeps_until_the_worker_finishes(tiny_host: Host, monkeypatch) -> None:
    """No polling loop: each wake-up of the caller's thread takes the GIL from the worker."""
    import time
    from types import SimpleNamespace

    from imagenodes.registry import runner as executor_module

    caller = threading.get_ident()
    caller_waits: list[float | None] = []

    class CountingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if threading.get_ident() == caller:
                caller_waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(
        executor_module,
        "threading",
        SimpleNamespace(Event=CountingEvent, Thread=threading.Thread),
    )

    def slow_consumer(event) -> None:  # ~0.6 s of work in the worker thread
        if event.type == "node.progress":
            time.sleep(0.1)

    started = time.monotonic()
    result = tiny_host.run("generate_image_v2", {**BASE, "steps": 6}, on_event=slow_consumer)
    assert time.monotonic() - started >= 0.6 and len(result.outputs["images"]) == 1
    # 20 ms polling would have woken the caller ~30 times; an event wakes it once.
    assert 1 <= len(caller_waits) <= 2, caller_waits
    assert caller_waits[0] is None  # no timeout given: no deadline to wake up for


def test_an_inline_run_uses_the_callers_thread_and_its_token_cancels_it(tiny_host: Host) -> None:
    """The service's worker runs its job itself (``inline``): no second thread, and the
    host's one cancel registry reaches the run under its id."""
    threads: set[int] = set()
    run_id = "inline-run"

    def on_event(event) -> None:
        threads.add(threading.get_ident())
        if event.type == "node.progress" and event.step == 2:
            assert tiny_host.running() == [run_id]
            tiny_host.cancel(run_id)

    with pytest.raises(ImageNodesError) as info:
        tiny_host.run(
            "generate_image_v2", {**BASE, "steps": 6}, on_event=on_event, run_id=run_id, inline=True
        )
    assert info.value.code == "CANCELLED"
    assert threads == {threading.get_ident()} and tiny_host.running() == []
