"""Comfy API v2 (``/comfy/api/v2``) driven by its official client, PyPI ``comfy-sdk``.

The server is the real app on uvicorn on a free 127.0.0.1 port (``tests.test_server``'s
``serve`` fixture); the client reaches it as any integrator does, through
``COMFY_BASE_URL``.  The generating tests run the embedded model (few steps); the
refusals run on an API-only server (``workers=0``) that never loads torch.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import comfy_graph as graph
from tests.test_server import Served, png, serve  # noqa: F401  (serve: the fixture)


@pytest.fixture
def comfy(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ``comfy_sdk.Comfy`` client for a served app (no key: the server has no token)."""
    from comfy_sdk import Comfy

    monkeypatch.delenv("COMFY_API_KEY", raising=False)

    def make(served: Served, **kwargs: Any) -> Any:
        monkeypatch.setenv("COMFY_BASE_URL", f"{served.url}/comfy")
        return Comfy(timeout=60, **kwargs)

    return make


def jobs_of(served: Served) -> list[dict[str, Any]]:
    with served.client() as c:
        return list(c.get("/v1/jobs").json()["jobs"])


# -- with the real client, generating ------------------------------------------------------
@pytest.mark.slow
def test_the_sdk_uploads_runs_streams_and_downloads(serve: Any, comfy: Any) -> None:  # noqa: F811
    from comfy_sdk import IdempotencyKeyReuse
    from comfy_sdk.events import OutputReady, Progress, StatusChange

    served: Served = serve()
    with comfy(served) as client:
        # An uploaded asset stands for an image input: ImageToImage edits it.
        asset = client.assets.from_bytes(png(), filename="source.png", content_type="image/png")
        workflow = client.workflows.from_json(graph())
        workflow.set_input("3", "source_image", asset)
        workflow.json["3"].update(class_type="ImageToImage", _meta={"title": "Edit upload"})
        workflow.json["3"]["inputs"].update(
            prompt="a yellow circle on a blue background",
            negative_prompt="",
            strength=0.7,
            steps=3,
            seed=3,
        )
        key = str(uuid.uuid4())
        job = client.submit(workflow, idempotency_key=key)
        assert asset.id and asset.created_new is True and asset.hash.startswith("blake3:")

        events = list(job.events())
        statuses = [e.status for e in events if isinstance(e, StatusChange)]
        assert statuses[-1] == "succeeded" and "running" in statuses
        progress = [e for e in events if isinstance(e, Progress)]
        assert progress and all(0 <= p.value <= 1 for p in progress)
        assert {p.current_node for p in progress} >= {"1", "2", "3"}
        assert any(p.step and p.steps == 3 for p in progress), "no sampler step"
        assert progress[-1].value == 1.0 and progress[-1].nodes_done == 3
        streamed = [e.output for e in events if isinstance(e, OutputReady)]
        assert sorted(o.node_id for o in streamed) == ["1", "2", "3"]

        job.result()  # polls to the end: the authoritative view
        assert job.status == "succeeded" and job.error is None
        assert sorted(o.node_id for o in job.outputs) == ["1", "2", "3"]
        assert {o.id for o in job.outputs} == {o.id for o in streamed}
        for output in job.outputs:
            assert output.type == "image" and output.content_type == "image/png"
            data = output.to_bytes()
            assert len(data) == output.size_bytes
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "PNG" and image.size == (64, 64)
            assert output.job_id == job.id
        edited = job.get_outputs("3")[0]
        assert edited.to_bytes(range=(0, 7)) == b"\x89PNG\r\n\x1a\n"
        # An output is an asset: its record, and a download URL on this server.
        record = client.assets.get(edited.id)
        assert record.hash and record.job_id == job.id
        assert edited.get_download_url().url.startswith(f"{served.url}/comfy/api/v2/assets/")
        # The graph as sent, asset reference and all.
        sent = job.get_workflow()
        assert sent.format == "api"
        assert sent.graph["3"]["inputs"]["source_image"]["__type"] == "core/ASSET"
        assert sent.graph["3"]["inputs"]["source_image"]["info"]["id"] == asset.id

        # An exact resend under the same key is refused, naming the first job; nothing
        # new is queued.
        with pytest.raises(IdempotencyKeyReuse) as refused:
            client.submit(workflow, idempotency_key=key)
        assert refused.value.http_status == 422
        assert refused.value.details["job_id"] == job.id
        listed = jobs_of(served)
        assert [j["id"] for j in listed] == [job.id]
        assert listed[0]["kind"] == "flow" and listed[0]["status"] == "succeeded"

        # The same bytes again: the dedup fast path (HEAD by-hash, from-hash) finds the
        # asset, nothing is uploaded twice.
        again = client.assets.from_bytes(png(), filename="again.png", content_type="image/png")
        assert again.commit() == asset.id and again.created_new is False
        # And an output's bytes are known too.
        with served.client() as c:
            blob = edited.to_bytes()
            from comfy_sdk._hashing import hash_bytes

            head = c.head(f"/comfy/api/v2/assets/by-hash/{hash_bytes(blob)}")
            assert head.status_code == 200


@pytest.mark.slow
def test_cancel_a_queued_and_a_running_job(serve: Any, comfy: Any) -> None:  # noqa: F811
    served: Served = serve()
    with comfy(served) as client, served.client() as c:
        c.post("/v1/queue/pause")
        queued = client.submit(client.workflows.from_json(graph(steps=40)))
        assert queued.status == "queued"
        assert c.get(f"/comfy/api/v2/jobs/{queued.id}").json()["queue_position"] == 0
        queued.cancel()
        assert queued.status == "canceled"
        assert queued.error.code == "cancelled"
        running = client.submit(client.workflows.from_json(graph(steps=40, seed=7)))
        c.post("/v1/queue/resume")
        from comfy_sdk.events import Progress

        for event in running.events():  # until the first sampler step
            if isinstance(event, Progress) and event.step:
                break
        running.cancel()
        assert running.status in ("canceling", "canceled")
        running.wait(timeout=60)
        assert running.status == "canceled"
        assert {j["id"]: j["status"] for j in jobs_of(served)} == {
            queued.id: "cancelled",
            running.id: "cancelled",
        }


# -- refusals, on an API-only server ---------------------------------------------------------
def test_refusals_are_the_specs_envelope(serve: Any, comfy: Any) -> None:  # noqa: F811
    from comfy_sdk import InvalidWorkflow, MissingAsset, NotFound

    served: Served = serve(workers=0)
    with comfy(served) as client, served.client() as c:
        # A graph that cannot run: per node, our codes as the reasons.
        with pytest.raises(InvalidWorkflow) as bad:
            client.submit(client.workflows.from_json(graph(steps=80)))
        assert bad.value.http_status == 422 and bad.value.code == "invalid_workflow"
        node_errors = bad.value.details["node_errors"]
        assert {n: [e["reason"] for e in errors] for n, errors in node_errors.items()} == {
            "1": ["INVALID_STEPS"],
            "2": ["INVALID_STEPS"],
        }
        assert node_errors["1"][0]["field"] == "steps"
        assert str(bad.value).startswith("Node 1 (GenerateImageV2): ")
        # An asset reference to nothing of this server.
        missing = client.workflows.from_json(graph())
        missing.json["2"]["inputs"]["source_image"] = {
            "__type": "core/ASSET",
            "info": {"id": "asset_bm9wZQ"},
        }
        with pytest.raises(MissingAsset) as lost:
            client.submit(missing)
        assert lost.value.details["node_id"] == "2"
        with pytest.raises(NotFound):
            client.jobs.get(str(uuid.uuid4()))
        assert jobs_of(served) == []

        # What the client would refuse itself, sent by hand.
        ui = c.post("/comfy/api/v2/jobs", json={"workflow": {"nodes": [], "links": []}})
        assert ui.status_code == 422 and ui.json()["error"]["code"] == "workflow_format_ui"
        refused = c.post("/comfy/api/v2/jobs", json=[1]).json()["error"]["code"]
        assert refused == "invalid_request"
        webhook = c.post("/comfy/api/v2/jobs", json={"workflow": graph(), "webhook_url": "x"})
        assert webhook.status_code == 422
        # A declared hash that is not the bytes': nothing stored.
        mismatch = c.post(
            "/comfy/api/v2/assets",
            files={"file": ("x.png", png(), "image/png")},
            data={"content_type": "image/png", "file_path": "x.png", "expected_hash": "blake3:0"},
        )
        assert mismatch.status_code == 409 and mismatch.json()["error"]["code"] == "hash_mismatch"
        not_image = c.post(
            "/comfy/api/v2/assets",
            files={"file": ("x.txt", b"hello", "text/plain")},
            data={"content_type": "text/plain", "file_path": "x.txt"},
        )
        assert not_image.status_code == 422 and "error" in not_image.json()
        assert c.head(f"/comfy/api/v2/assets/by-hash/blake3:{'0' * 64}").status_code == 404
        none = c.post("/comfy/api/v2/assets/from-hash", json={"hash": f"blake3:{'0' * 64}"})
        assert none.status_code == 404 and none.json()["error"]["code"] == "blob_not_found"
        for bogus in ("nope", "asset_Li4vZXRjL3Bhc3N3ZA", "asset_" + "A" * 500):
            r = c.get(f"/comfy/api/v2/assets/{bogus}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_assets_and_the_queue_without_generating(serve: Any, comfy: Any) -> None:  # noqa: F811
    """An upload through the client, its record, its bytes and ranges; a submitted job
    seen through v2 and /v1 while it waits; the same key refused even mid-queue."""
    from comfy_sdk import IdempotencyKeyReuse

    served: Served = serve(workers=0)
    with comfy(served) as client, served.client() as c:
        asset = client.assets.from_bytes(png(), filename="photo.png", content_type="image/png")
        asset_id = asset.commit()
        meta = c.get(f"/comfy/api/v2/assets/{asset_id}").json()
        assert meta["file_path"] == "photo.png" and meta["content_type"] == "image/png"
        assert meta["size_bytes"] == len(png()) and meta["hash"] == asset.hash
        content = c.get(meta["url"])
        assert content.content == png() and content.headers["content-type"] == "image/png"
        part = c.get(meta["url"], headers={"Range": "bytes=1-3"})
        assert part.status_code == 206 and part.content == png()[1:4]
        assert c.get(meta["url"], headers={"Range": "bytes=99999-"}).status_code == 416
        # The upload is one of the service's files, stored as /v1/uploads stores it.
        upload = c.post("/v1/uploads", files={"file": ("x.png", png(), "image/png")}).json()
        assert c.get(upload["url"]).content == png()
        assert served.host.workspace.ls("uploads") == [upload["path"]]

        workflow = client.workflows.from_json(graph())
        workflow.set_input("2", "source_image", asset)
        job = client.submit(workflow, idempotency_key="order-42", metadata={"client": "t"})
        assert job.status == "queued" and job.metadata == {"client": "t"}
        raw = c.get(f"/comfy/api/v2/jobs/{job.id}").json()
        assert raw["queue_position"] == 0 and raw["progress"] is None and raw["outputs"] == []
        assert raw["urls"]["events"] == f"/comfy/api/v2/jobs/{job.id}/events"
        with pytest.raises(IdempotencyKeyReuse):
            client.submit(client.workflows.from_json(graph(seed=9)), idempotency_key="order-42")
        assert [j["id"] for j in jobs_of(served)] == [job.id]
        assert [s.id for s in client.list_jobs(metadata={"client": "t"})] == [job.id]
        v1 = c.get(f"/v1/jobs/{job.id}").json()
        assert v1["kind"] == "flow" and v1["status"] == "queued"
        # The live stream opens with the current state.
        with (
            httpx.Client(base_url=served.url, timeout=10) as s,
            s.stream("GET", raw["urls"]["events"]) as stream,
        ):
            first = next(line for line in stream.iter_lines() if line.startswith("data:"))
            assert '"status":"queued"' in first and '"queue_position":0' in first
        job.cancel()
        assert job.status == "canceled"


def test_v2_needs_the_token(serve: Any, comfy: Any) -> None:  # noqa: F811
    """The token is the app's, for v2 as for /v1 (comfy-sdk sends it as its api key)."""
    from comfy_sdk import ComfyError

    locked: Served = serve(workers=0, token="s3cret")
    with comfy(locked) as anonymous, pytest.raises(ComfyError) as refused:
        anonymous.jobs.get(str(uuid.uuid4()))
    assert refused.value.http_status == 401
    with comfy(locked, api_key="s3cret") as client:
        asset = client.assets.from_bytes(png(), filename="a.png", content_type="image/png")
        assert asset.commit().startswith("asset_")


def test_v2_keeps_the_origin_and_host_rules(serve: Any) -> None:  # noqa: F811
    served: Served = serve(workers=0)
    with served.client() as c:
        evil = c.post(
            "/comfy/api/v2/jobs",
            json={"workflow": graph()},
            headers={"Origin": "http://evil.example"},
        )
        assert evil.status_code == 403 and jobs_of(served) == []
        rebound = c.get("/comfy/api/v2/jobs", headers={"Host": "rebind.example:8188"})
        assert rebound.status_code == 421
