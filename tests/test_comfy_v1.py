"""ComfyUI's v1 protocol over real HTTP and WebSocket: a real v1 client library from
PyPI (``comfy-api-simplified``), ComfyUI's socket messages, its error shapes, and the
one queue shared with ``/v1``.

The server is the real app on uvicorn on a free 127.0.0.1 port (``tests.test_server``'s
``serve`` fixture), generating with the embedded model.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import comfy_graph as graph
from tests.test_server import FAST, Served, png, serve  # noqa: F401  (serve: the fixture)

pytestmark = pytest.mark.slow


def test_a_v1_client_library_queues_a_prompt_and_gets_the_images(
    serve: Any,  # noqa: F811
) -> None:
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    served: Served = serve()
    api = ComfyApiWrapper(served.url)  # it joins /prompt, /ws, /history, /view to the root
    images = api.queue_and_wait_images(ComfyWorkflowWrapper(graph()), "Edit")
    assert images, "no images"
    for data in images.values():
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size == (64, 64)
    info = api.get_object_info("GenerateImageV2")
    assert info["GenerateImageV2"]["output_node"] is True
    # The prompt is a job of the one queue: /v1 lists it, as a flow job of two steps.
    with served.client() as c:
        jobs = c.get("/v1/jobs").json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["kind"] == "flow" and jobs[0]["status"] == "succeeded"
        assert [s["id"] for s in jobs[0]["outputs"]["steps"]] == ["1", "2"]


def test_the_socket_speaks_comfyui_for_a_prompt(serve: Any) -> None:  # noqa: F811
    from websockets.sync.client import connect

    served: Served = serve()
    client_id = uuid.uuid4().hex
    ws_url = served.url.replace("http://", "ws://") + f"/comfy/ws?clientId={client_id}"
    with connect(ws_url) as ws, served.client() as c:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        assert first["data"]["status"]["exec_info"]["queue_remaining"] == 0
        r = c.post("/comfy/prompt", json={"prompt": graph(), "client_id": client_id})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        assert r.json()["node_errors"] == {}
        messages = []
        deadline = time.monotonic() + 120
        while not messages or messages[-1]["type"] != "execution_success":
            assert time.monotonic() < deadline, messages[-5:]
            messages.append(json.loads(ws.recv(timeout=60)))
        history = c.get(f"/comfy/api/history/{prompt_id}").json()[prompt_id]
    kinds = [m["type"] for m in messages]
    assert kinds.index("execution_start") < kinds.index("executing")
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing == ["1", "2", None]  # each node, then the end (ComfyUI's convention)
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert {p["node"] for p in progress} == {"1", "2"}
    assert {p["max"] for p in progress if p["node"] == "1"} == {3}  # img2img: fewer
    assert any(m["type"] == "progress_state" for m in messages)
    executed = {m["data"]["node"]: m["data"]["output"] for m in messages if m["type"] == "executed"}
    assert set(executed) == {"1", "2"}
    image = executed["2"]["images"][0]
    assert image["type"] == "output" and image["subfolder"].startswith("runs/")
    assert all(m["data"]["prompt_id"] == prompt_id for m in messages if m["type"] != "status")
    assert history["status"]["completed"] is True and history["outputs"]["2"]["images"] == [image]
    with served.client() as c:
        view = c.get("/comfy/api/view", params=image)
        assert view.status_code == 200 and view.headers["content-type"] == "image/png"


def test_a_bad_graph_answers_comfyuis_node_errors_with_our_codes(serve: Any) -> None:  # noqa: F811
    served: Served = serve()
    bad = graph(steps=80)
    with served.client() as c:
        r = c.post("/comfy/prompt", json={"prompt": bad})
        assert r.status_code == 400
        body = r.json()
        assert set(body) == {"error", "node_errors"} and body["error"]["type"]
        codes = {
            node: [e["extra_info"].get("code") for e in errors["errors"]]
            for node, errors in body["node_errors"].items()
        }
        assert codes == {"1": ["INVALID_STEPS"], "2": ["INVALID_STEPS"]}
        names = {e["extra_info"].get("input_name") for e in body["node_errors"]["1"]["errors"]}
        assert names == {"steps"}
        unknown = c.post(
            "/comfy/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}
        )
        assert unknown.status_code == 400 and "error" in unknown.json()
        assert (
            c.post("/comfy/prompt", json={"client_id": "x"}).json()["error"]["type"] == "no_prompt"
        )
        assert c.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_queue_history_and_interrupt_share_the_v1_queue(serve: Any) -> None:  # noqa: F811
    served: Served = serve(workers=1)
    with served.client() as c:
        c.post("/v1/queue/pause")
        v1 = c.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": FAST}).json()
        comfy = c.post("/comfy/prompt", json={"prompt": graph(steps=50)}).json()["prompt_id"]
        queue = c.get("/comfy/queue").json()
        pending = [item[1] for item in queue["queue_pending"]]
        assert pending == [v1["id"], comfy] and queue["queue_running"] == []
        assert (
            pending
            == [j["id"] for j in c.get("/comfy/api/jobs?status=pending").json()["jobs"]][::-1]
        )
        c.post("/comfy/queue", json={"delete": [v1["id"]]})
        assert c.get(f"/v1/jobs/{v1['id']}").json()["status"] == "cancelled"
        c.post("/v1/queue/resume")
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{comfy}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/comfy/interrupt", json={}).status_code == 200
        while c.get(f"/v1/jobs/{comfy}").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get(f"/v1/jobs/{comfy}").json()["status"] == "cancelled"
        history = c.get("/comfy/history").json()
        assert history[comfy]["status"]["status_str"] == "error"
        assert history[v1["id"]]["prompt"][2]["1"]["class_type"] == "GenerateImageV2"


def test_an_upload_is_viewable_and_the_empty_lists_are_well_formed(serve: Any) -> None:  # noqa: F811
    served: Served = serve()
    with served.client() as c:
        r = c.post("/comfy/api/upload/image", files={"image": ("x.png", png(), "image/png")})
        assert r.status_code == 200, r.text
        entry = r.json()
        assert entry["type"] == "input" and entry["name"].endswith(".png")
        view = c.get("/comfy/api/view", params={"filename": entry["name"], "type": "input"})
        assert view.status_code == 200 and view.content == png()
        for path in ("/comfy/api/embeddings", "/comfy/api/extensions", "/comfy/api/models"):
            assert c.get(path).json() == []
        stats = c.get("/comfy/api/system_stats").json()
        assert "system" in stats and stats["devices"] == []
        assert c.get("/comfy/api/features").json()["max_upload_size"] > 0
        missing = c.get(
            "/comfy/api/view",
            params={"filename": "nope.png", "type": "output", "subfolder": "runs/" + "0" * 32},
        )
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "FILE_NOT_FOUND"


def test_comfy_routes_keep_the_services_rules(serve: Any) -> None:  # noqa: F811
    served: Served = serve()
    with served.client() as c:
        evil = c.post(
            "/comfy/prompt", json={"prompt": graph()}, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "FORBIDDEN"
        rebound = c.get("/comfy/api/object_info", headers={"Host": "rebind.example:8188"})
        assert rebound.status_code == 421
    guarded: Served = serve(token="s3cret")
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        assert c.get("/comfy/api/object_info").status_code == 401
        ok = c.get("/comfy/api/object_info", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "GenerateImageV2" in ok.json()
