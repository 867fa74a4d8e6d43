"""The pipeline cache: load once, share across tasks, single flight, byte budget."""

from __future__ import annotations

import shutil
import threading

import pytest
from PIL import Image

from imagenodes import Host
from imagenodes.workspace.images import image_to_data_uri

T2I = {
    "prompt": "a red circle",
    "negative_prompt": "",
    "steps": 2,
    "aspect_ratio": "1:1",
    "seed": 1,
}


def i2i_inputs() -> dict:
    src = image_to_data_uri(Image.new("RGB", (64, 64), (0, 0, 200)))
    return {"source_image": src, "prompt": "x", "negative_prompt": "", "steps": 2, "seed": 1}


def test_model_loads_once_and_task_switch_shares_components(tiny_host: Host) -> None:
    tiny_host.run("generate_image_v2", T2I)
    tiny_host.run("generate_image_v2", T2I)
    assert tiny_host.engine.cache.loads == 1
    before = tiny_host.engine.status()
    tiny_host.run("image_to_image", i2i_inputs())
    after = tiny_host.engine.status()
    assert tiny_host.engine.cache.loads == 1
    assert after["bytes"] == before["bytes"] > 0
    entry = next(iter(tiny_host.engine.cache._entries.values()))
    img2img = entry.variants["image-to-image"]
    assert img2img.unet is entry.base.unet and img2img.vae is entry.base.vae
    assert after["loaded"][0]["tasks"] == ["image-to-image", "text-to-image"]


def test_warm_run_reads_no_weights_from_disk(make_host, tiny_sd, tmp_path) -> None:
    folder = tmp_path / "tiny-sd-copy"
    shutil.copytree(tiny_sd, folder)
    host = make_host(folder, tiny_profile=True)
    host.run("generate_image_v2", T2I)
    shutil.rmtree(folder)  # the weights are gone from disk: a warm run must not need them
    result = host.run("generate_image_v2", {**T2I, "seed": 2})
    assert result.outputs["images"] and host.engine.cache.loads == 1


def test_concurrent_first_requests_load_once(make_host, tiny_sd) -> None:
    host = make_host(tiny_sd, tiny_profile=True)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            host.run("generate_image_v2", {**T2I, "seed": seed})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and host.engine.cache.loads == 1


def test_byte_budget_evicts_least_recently_used(make_host, tiny_models, monkeypatch) -> None:
    sd, turbo = tiny_models("sd"), tiny_models("sd-turbo")
    probe = make_host(sd, tiny_profile=True)
    probe.run("generate_image_v2", T2I)
    one_model = probe.engine.status()["bytes"]

    monkeypatch.setenv("IMAGENODES_CACHE_BYTES", str(int(one_model * 1.5)))
    host = make_host(sd, tiny_profile=True, connections={"turbo": {"model": str(turbo)}})
    assert host.engine.cache.budget == int(one_model * 1.5)
    host.run("generate_image_v2", T2I)
    host.run("generate_image_v2", T2I, connections={"pixelml": "turbo"})
    status = host.engine.status()
    assert [m["profile"] for m in status["loaded"]] == ["sd-turbo"]
    assert status["evictions"] == 1 and status["bytes"] <= status["budget_bytes"]
    host.engine.clear()
    assert host.engine.status()["loaded"] == [] and host.engine.status()["bytes"] == 0


def test_connection_overrides_device_and_dtype(make_host, tiny_sd) -> None:
    host = make_host(
        tiny_sd, tiny_profile=True, connections={"default": {"device": "cpu", "dtype": "bfloat16"}}
    )
    host.run("generate_image_v2", T2I)
    loaded = host.engine.status()["loaded"][0]
    assert (loaded["device"], loaded["dtype"]) == ("cpu", "bfloat16")


@pytest.mark.slow  # imports torch
def test_auto_device_and_dtype() -> None:
    import torch

    from imagenodes.engine.device import pick_device, pick_dtype

    device = pick_device("auto")
    assert device == ("cuda" if torch.cuda.is_available() else device)
    assert pick_dtype("auto", "cpu") == "float32" and pick_dtype("auto", "cuda") == "float16"
    assert pick_dtype("bf16", "cuda") == "bfloat16"


def test_bad_cache_budget_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("IMAGENODES_CACHE_BYTES", "lots")
    with pytest.raises(Exception) as info:
        Host(tmp_path / "ws")
    assert info.value.code == "CONNECTION_ERROR" and "IMAGENODES_CACHE_BYTES" in str(info.value)


def test_gc_paused_nests_across_threads_and_restores_the_previous_state() -> None:
    import gc
    import threading

    from imagenodes.engine.imports import gc_paused

    assert gc.isenabled()
    inner_started, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            inner_started.set()
            release.wait(10)

    with gc_paused():
        assert not gc.isenabled()
        worker = threading.Thread(target=other)
        worker.start()
        inner_started.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: stays off
    finally:
        gc.enable()
