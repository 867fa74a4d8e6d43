"""A hostile client on the event streams and connections of ``imagenodes serve``
(docs/security.md, "Event streams and slow clients"): event positions that are no
integers, WebSocket garbage and floods, a SIGTERM with streams open, idle and slowloris
connections, slow uploads next to event streams.

Every test talks to a real server on a free 127.0.0.1 port: the ``serve`` fixture of
tests/test_server.py (the app on plain uvicorn), ``serve_cli`` below (the app on
uvicorn configured as ``imagenodes serve`` configures it: :mod:`imagenodes.server.serving`),
or ``imagenodes serve`` itself in a subprocess (SIGTERM).
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from imagenodes import Host
from imagenodes.server import ServerSettings, create_app
from tests.helpers import start_in_thread
from tests.test_server import (  # noqa: F401  (serve: the uvicorn fixture)
    FAST,
    Served,
    _free_port,
    _slow_job,
    _start_serve,
    durable,
    events_of,
    png,
    serve,
)

pytestmark = pytest.mark.slow

JOB = {"node": "generate_image_v2", "inputs": {**FAST, "seed": 4}}


@pytest.fixture
def serve_cli(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """The app on uvicorn as ``imagenodes serve`` runs it (serving.config: header and
    idle timeouts, connection and frame caps; serving.Server: streams end first)."""
    from imagenodes.server import serving

    running: list[Served] = []

    def start(**options: Any) -> Served:
        host = Host(tmp_path / "ws")
        settings = ServerSettings(port=0, state_dir=tmp_path / "state", **options)
        app = create_app(host, settings)
        config = serving.config(app, settings, log_level="warning")
        server = serving.Server(config, app.state.service)
        port, thread = start_in_thread(server)
        served = Served(f"http://127.0.0.1:{port}", host, server, thread)
        running.append(served)
        return served

    yield start
    for served in running:
        served.server.should_exit = True
        served.thread.join(30)


@pytest.fixture
def plain(serve: Callable[..., Served]) -> Callable[..., Served]:  # noqa: F811
    """tests/test_server.py's ``serve``: the app on uvicorn's defaults (16 MiB frames,
    no header timeout)."""
    return serve


def _ws_url(served: Served) -> str:
    return served.url.replace("http://", "ws://") + "/v1/ws"


def _until_completed(ws: Any, limit: float = 60) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1].get("type") != "job.completed":
        out.append(json.loads(ws.recv(timeout=limit)))
    return out


class Healthz:
    """``GET /v1/healthz`` on a fresh connection every 20 ms in a thread: the worst
    latency seen while something else loads the server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            assert httpx.get(f"{self.url}/v1/healthz", timeout=30).status_code == 200
            self.latencies.append(time.perf_counter() - t0)
            self._stop.wait(0.02)

    def __enter__(self) -> Healthz:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def worst(self) -> float:
        return max(self.latencies)


# -- 1. event positions ----------------------------------------------------------------------
BAD_POSITIONS = ["1" * 23, str(2**63), "-5", "abc", "1e3", "0x10", "3.0", "+3", "3_0", ""]


def test_a_position_that_is_no_sane_integer_replays_the_stream(
    plain: Callable[..., Served],
) -> None:
    """Last-Event-ID and the WebSocket's ``after`` read a bad position as 0 (the whole
    stored stream); ``?after=`` is typed: 422 INVALID_INPUT naming ``after``.  23
    digits used to break the stream mid-response (SQLite OverflowError)."""
    from websockets.sync.client import connect

    served = plain()
    with served.client() as c:
        job = c.post("/v1/jobs", json=JOB, headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded", job
        job_id = job["id"]
        whole = events_of(c, job_id)
        assert whole[-1]["type"] == "job.completed" and whole == durable(whole)
        for bad in BAD_POSITIONS:
            assert events_of(c, job_id, **{"Last-Event-ID": bad}) == whole, bad
        assert events_of(c, job_id, **{"Last-Event-ID": "3"}) == whole[3:]
        # The largest position there is: past the end of a finished job, the stream
        # ends at once (it used to wait, one connection held, for events never coming).
        t0 = time.monotonic()
        assert events_of(c, job_id, **{"Last-Event-ID": str(2**63 - 1)}) == []
        assert time.monotonic() - t0 < 3
        for bad in ["1" * 23, str(2**63), "-1", "abc"]:
            r = c.get(f"/v1/jobs/{job_id}/events", params={"after": bad})
            assert r.status_code == 422, (bad, r.text)
            assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
                "INVALID_INPUT",
                "after",
            )
        with connect(_ws_url(served)) as ws:
            for bad in ["1" * 23, -3, 2**64, 1.5, None, True, [1], {"a": 1}]:
                ws.send(json.dumps({"subscribe": [job_id], "after": {job_id: bad}}))
                assert _until_completed(ws) == whole, bad
            ws.send(json.dumps({"subscribe": [job_id], "after": {job_id: 5}}))
            assert _until_completed(ws) == whole[5:]


# -- 2. WebSocket garbage, oversized messages, subscription floods ------------------------------
def test_websocket_garbage_gets_coded_errors_and_the_socket_stays_usable(
    plain: Callable[..., Served],
) -> None:
    from websockets.sync.client import connect

    served = plain()
    many = json.dumps({"subscribe": [str(uuid.uuid4()) for _ in range(101)]})
    cases: list[tuple[str | bytes, str, str]] = [
        ("not json", "INVALID_JSON", "message"),
        ('{"subscribe": [', "INVALID_JSON", "message"),
        ("[" * 20_000 + "]" * 20_000, "INVALID_JSON", "message"),  # 40 kB, nested too deep
        (b"\x00\x01binary", "INVALID_INPUT", "message"),
        ("[1, 2]", "INVALID_INPUT", "message"),
        ('"subscribe"', "INVALID_INPUT", "message"),
        ("null", "INVALID_INPUT", "message"),
        ('{"subscribe": "abc"}', "INVALID_INPUT", "subscribe"),
        ('{"subscribe": ["ok", 7]}', "INVALID_INPUT", "subscribe.1"),
        (json.dumps({"subscribe": ["x" * 200]}), "INVALID_INPUT", "subscribe.0"),
        ('{"after": [1]}', "INVALID_INPUT", "after"),
        ('{"unsubscribe": ["x"]}', "INVALID_INPUT", "unsubscribe"),
        (many, "INVALID_INPUT", "subscribe"),  # 101 jobs: over the cap of 100
        ("x" * 100_000, "PAYLOAD_TOO_LARGE", "message"),  # over 64 KiB
        (json.dumps({"subscribe": ["no-such-job"]}), "UNKNOWN_JOB", "subscribe"),
    ]
    with served.client() as c, connect(_ws_url(served)) as ws:
        c.post("/v1/queue/pause")
        job_id = c.post("/v1/jobs", json=JOB).json()["id"]
        for message, code, field in cases:
            ws.send(message)
            error = json.loads(ws.recv(timeout=10))["error"]
            shown = message[:40]
            assert (error["code"], error["field"]) == (code, field), (shown, error)
            assert error["message"] and error["solution"], error
        ws.send(many)  # the cap is named, and nothing of the message was subscribed
        assert "at most 100 jobs" in json.loads(ws.recv(timeout=10))["error"]["message"]
        # Still usable: a real subscription streams the job to its end.
        ws.send(json.dumps({"subscribe": [job_id]}))
        c.post("/v1/queue/resume")
        events = _until_completed(ws)
        assert events[0]["type"] == "job.queued" and events[-1]["status"] == "succeeded"


def test_a_huge_subscription_message_costs_the_loop_nothing(
    plain: Callable[..., Served], serve_cli: Callable[..., Served]
) -> None:
    """One 3.5 MB message subscribing 100 000 ids stalled /v1/healthz for 5.2 s (one
    store look-up and one thread hop per id).  Now: on plain uvicorn (16 MiB frames)
    the handler answers PAYLOAD_TOO_LARGE and the socket stays usable; as ``imagenodes
    serve`` runs it (frames over 16 x 64 KiB refused by the protocol) it is closed with
    1009.  Either way /v1/healthz keeps answering at once."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    huge = json.dumps({"subscribe": [uuid.uuid4().hex for _ in range(100_000)]})
    assert len(huge) > 3_400_000
    served_plain = plain()
    with Healthz(served_plain.url) as health, connect(_ws_url(served_plain)) as ws:
        time.sleep(0.2)
        ws.send(huge)
        error = json.loads(ws.recv(timeout=10))["error"]
        assert error["code"] == "PAYLOAD_TOO_LARGE" and error["field"] == "message"
        ws.send(json.dumps({"subscribe": ["nope"]}))
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "UNKNOWN_JOB"
        time.sleep(0.3)
    assert health.worst < 0.5, health.latencies

    cli = serve_cli()
    with Healthz(cli.url) as health, connect(_ws_url(cli)) as ws:
        time.sleep(0.2)
        ws.send(huge)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        time.sleep(0.3)
    assert health.worst < 0.5, health.latencies


# -- 3. SIGTERM ends the open streams with stream.reconnect --------------------------------------
def test_sigterm_ends_open_streams_with_a_reconnect_event(tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_serve(tmp_path, port)
    sse: list[Any] = []
    sse_ended: list[float] = []
    progressing = threading.Event()

    def follow_sse(job_id: str) -> None:
        with (
            httpx.Client(base_url=url, timeout=60) as c,
            connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source,
        ):
            for event in source.iter_sse():
                sse.append(event)
                if event.event == "node.progress":
                    progressing.set()
        sse_ended.append(time.monotonic())

    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            job_id = c.post("/v1/jobs", json=_slow_job(3)).json()["id"]
        follower = threading.Thread(target=follow_sse, args=(job_id,), daemon=True)
        follower.start()
        with (
            connect(f"ws://127.0.0.1:{port}/v1/ws") as ws,
            connect(f"ws://127.0.0.1:{port}/v1/ws") as idle_ws,
        ):
            ws.send(json.dumps({"subscribe": [job_id]}))
            assert progressing.wait(90), [e.event for e in sse]
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            over_ws: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    over_ws.append(json.loads(ws.recv(timeout=20)))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            # A socket that follows no job is told as well.
            last = json.loads(idle_ws.recv(timeout=20))
            assert last["type"] == "stream.reconnect"
        follower.join(20)
        assert sse_ended and sse_ended[0] - started < 5, "the SSE stream did not end"
        end = sse[-1]
        assert end.event == "stream.reconnect" and end.retry == 2000
        # No id of its own: a reconnect resumes after the last durable event.
        last_durable = [json.loads(e.data)["seq"] for e in sse if json.loads(e.data)["seq"]][-1]
        assert end.id == str(last_durable)
        data = json.loads(end.data)
        assert data["reason"] == "shutdown" and data["job_id"] == job_id
        assert data["retry_ms"] == 2000 and data["seq"] is None
        assert over_ws[-1]["type"] == "stream.reconnect", over_ws[-3:]
        assert over_ws[-1]["job_id"] is None
        # uvicorn's graceful shutdown had nothing left to wait for.
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 15
    finally:
        proc.kill()
        proc.wait(30)


# -- 4. idle and slow connections ------------------------------------------------------------------
def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) before ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_idle_and_slowloris_connections_are_closed_and_healthz_answers(
    serve_cli: Callable[..., Served],
) -> None:
    """500 idle connections and 5 that send a request head a byte at a time: healthz
    answers at once all along, and every one of them is closed at --header-timeout-s
    (uvicorn alone kept them open for ever)."""
    _raise_fd_limit(4096)
    served = serve_cli(header_timeout_s=2, keep_alive_s=1)
    address = ("127.0.0.1", int(served.url.rsplit(":", 1)[1]))
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        head = b"GET /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: a\r\n" * 100
        for byte in head:
            if stop.is_set():
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # closed by the server
            time.sleep(0.1)

    opened = time.monotonic()
    idle = [socket.create_connection(address) for _ in range(500)]
    slow = [socket.create_connection(address) for _ in range(5)]
    trickles = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in slow]
    try:
        for t in trickles:
            t.start()
        latencies = []
        for _ in range(10):
            t0 = time.perf_counter()
            assert httpx.get(f"{served.url}/v1/healthz", timeout=10).status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
        assert max(latencies) < 0.5, latencies
        # Within the header timeout (2 s) and a margin for a loaded 2-core machine.
        deadline = opened + 2 + 3
        assert all(_closed_by_server(s, deadline) for s in idle)
        assert all(_closed_by_server(s, deadline) for s in slow)
        assert time.monotonic() - opened >= 1.9  # not before the timeout either
        # A client that answers after a response idles: uvicorn's keep-alive (1 s).
        with socket.create_connection(address) as kept:
            kept.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert kept.recv(65536).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(kept, time.monotonic() + 1 + 3)
        # A request head over 64 KiB: 431 with a coded body, then closed.
        with socket.create_connection(address) as big:
            big.sendall(
                b"GET /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                + b"a" * 70_000
                + b"\r\n\r\n"
            )
            answer = b""
            while chunk := big.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), head
        error = json.loads(body)["error"]
        assert (error["code"], error["field"]) == ("PAYLOAD_TOO_LARGE", "headers")
        assert httpx.get(f"{served.url}/v1/healthz", timeout=10).status_code == 200
    finally:
        stop.set()
        for s in idle + slow:
            s.close()


def test_long_streams_are_not_cut_by_the_header_timeout(
    serve_cli: Callable[..., Served],
) -> None:
    """The head deadline ends with the head: an SSE stream and a WebSocket that stay
    quiet for longer than --header-timeout-s are not closed."""
    from websockets.sync.client import connect

    served = serve_cli(header_timeout_s=1)
    with served.client() as c, connect(_ws_url(served)) as ws:
        c.post("/v1/queue/pause")
        job_id = c.post("/v1/jobs", json=JOB).json()["id"]
        ws.send(json.dumps({"subscribe": [job_id]}))
        with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
            events = source.iter_sse()
            assert next(events).event == "job.queued"
            assert json.loads(ws.recv(timeout=10))["type"] == "job.queued"
            time.sleep(2.5)  # quiet for 2.5 header timeouts
            c.post("/v1/queue/resume")
            assert [e.event for e in events][-1] == "job.completed"
        assert _until_completed(ws)[-1]["status"] == "succeeded"


# -- 5. slow uploads do not starve event streams, job views, readiness ---------------------------
def test_slow_uploads_do_not_starve_event_streams_and_job_views(
    plain: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six uploads that take 2 s each in their thread (as many as asyncio's default
    executor has threads on a 2-core machine, which every blocking call used to share)
    hold the ``work`` pool only; an SSE replay, a job view and /v1/readyz run on the
    ``read`` pool and answer at once."""
    from imagenodes.server.routers import files

    served = plain(work_threads=2, read_threads=2)
    with served.client() as c:
        job = c.post("/v1/jobs", json=JOB, headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded"
    real = files.store_upload
    entered: list[float] = []

    def slow_upload(*args: Any, **kwargs: Any) -> Any:
        entered.append(time.monotonic())
        time.sleep(2)
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "store_upload", slow_upload)
    statuses: list[int] = []

    def upload(index: int) -> None:
        body = png(colour=(index, 0, 0))
        r = httpx.post(
            f"{served.url}/v1/uploads",
            content=body,
            headers={"content-type": "image/png"},
            timeout=60,
        )
        statuses.append(r.status_code)

    uploads = [threading.Thread(target=upload, args=(i,), daemon=True) for i in range(6)]
    for t in uploads:
        t.start()
    deadline = time.monotonic() + 10
    while len(entered) < 2:  # both work threads are busy, four uploads wait
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with served.client() as c:
        t0 = time.perf_counter()
        assert events_of(c, job["id"])[-1]["type"] == "job.completed"
        assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
        assert c.get("/v1/readyz").status_code == 200
        assert time.perf_counter() - t0 < 1.0
    for t in uploads:
        t.join(60)
    assert statuses == [201] * 6
    assert max(entered) - min(entered) >= 3.5  # two at a time: the pool is bounded
