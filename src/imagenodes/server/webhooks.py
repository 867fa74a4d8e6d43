"""Webhooks: a job's events POSTed to a URL the job names, signed, throttled, retried.

* **Where**: only destinations on the allow-list (``--webhook-allow host[:port]``), and
  never a private, loopback or link-local address unless ``--webhook-allow-private``
  (the service must not become a way into the network it runs in).  Checked when the
  job is submitted (422 naming ``webhook``) and again before each delivery, against the
  address the name resolves to then.  URLs with credentials are refused.
* **What**: the job's events as JSON — the one event model
  (:mod:`imagenodes.registry.events`), exactly what SSE and the WebSocket carry —
  filtered by the job's ``webhook_events``; ``node.progress`` at most every
  ``progress_interval_s`` per job.
* **Signed**: ``X-Imagenodes-Signature: sha256=<hex HMAC-SHA256 of the body>`` with the
  server's secret (``--webhook-secret`` / ``IMAGENODES_WEBHOOK_SECRET``, else one kept
  in the state dir), so a receiver can tell the service's calls from anyone's.
* **Never in the way**: deliveries run on their own thread from a bounded queue; a
  receiver that is down delays nothing else.  ``job.completed`` is retried with
  exponential backoff (tenacity); other events are tried once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagenodes.errors import InputError
from imagenodes.registry.events import EVENT_TYPES, EventType
from imagenodes.workspace.urls import Target, is_public, resolve

log = logging.getLogger(__name__)

#: The event types a job's webhook may ask for: the one event model's.
__all__ = ["EVENT_TYPES", "EventType", "WebhookPolicy", "WebhookSender"]
SIGNATURE_HEADER = "X-Imagenodes-Signature"


@dataclass(frozen=True)
class WebhookPolicy:
    allow_hosts: tuple[str, ...] = ()
    allow_private: bool = False

    def check(self, url: str, *, field: str = "webhook") -> Target:
        """The checked address to deliver ``url``'s webhooks to, or INVALID_INPUT naming
        ``field``.

        The name is resolved once and the delivery connects to that address (DNS
        rebinding cannot swap it between check and connect).  One message for every
        refusal by policy, so the answer does not tell a caller which internal
        addresses exist.
        """
        refused = InputError(
            f"{field} must be an http(s) URL on the server's webhook allow-list "
            f"(--webhook-allow); {url!r} is not",
            field=field,
        )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise refused from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise refused
        if parts.username or parts.password:
            raise refused
        host = parts.hostname.lower()
        allowed = {h.lower() for h in self.allow_hosts}
        if host not in allowed and f"{host}:{port}" not in allowed:
            raise refused
        port = port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = resolve(host, port)
        except OSError:
            raise refused from None
        if not self.allow_private and not all(is_public(a) for a in addresses):
            raise refused
        return Target(url, parts.scheme, host, port, str(addresses[0]))


def load_secret(state_dir: Path, given: str | None) -> bytes:
    """The signing secret: given, else the one in the state dir (created once, 0600)."""
    if given:
        return given.encode()
    path = state_dir / "webhook_secret"
    if path.exists():
        return path.read_bytes().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    path.touch(mode=0o600)
    path.write_bytes(value)
    return value


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Delivery:
    url: str
    event: dict[str, Any]


class WebhookSender:
    """Delivers events on a thread of its own (see the module docstring)."""

    def __init__(
        self,
        secret: bytes,
        policy: WebhookPolicy,
        *,
        timeout_s: float = 5.0,
        progress_interval_s: float = 0.5,
        max_pending: int = 1000,
        final_attempts: int = 5,
    ) -> None:
        self._secret = secret
        self.policy = policy
        self._timeout = timeout_s
        self._interval = progress_interval_s
        self._final_attempts = final_attempts
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(max_pending)
        self._last_progress: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="imagenodes-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def submit(self, url: str, wanted: tuple[str, ...], event: dict[str, Any]) -> None:
        """Queue one event for ``url`` if the job wants its type (never blocks)."""
        kind = event["type"]
        if kind not in wanted:
            return
        if kind == "node.progress":
            now = time.monotonic()
            if now - self._last_progress.get(event["job_id"], 0.0) < self._interval:
                return
            self._last_progress[event["job_id"]] = now
        if kind == "job.completed":
            self._last_progress.pop(event["job_id"], None)
        try:
            self._queue.put_nowait(_Delivery(url, event))
        except queue.Full:
            log.warning("webhook queue full; dropped %s of job %s", kind, event["job_id"])

    def _run(self) -> None:
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        # trust_env=False: a proxy from the environment would resolve the name itself.
        with httpx.Client(timeout=self._timeout, follow_redirects=False, trust_env=False) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                final = item.event["type"] == "job.completed"
                retrying = Retrying(
                    stop=stop_after_attempt(self._final_attempts if final else 1),
                    wait=wait_exponential(multiplier=0.2, max=5),
                    retry=retry_if_exception_type((httpx.HTTPError, _Retryable)),
                    reraise=True,
                )
                try:
                    retrying(self._deliver, client, item)
                    self.delivered += 1
                except Exception as exc:  # a receiver that is down must not stop the thread
                    self.failed += 1
                    log.warning("webhook to %s failed: %s", urlsplit(item.url).netloc, exc)

    def _deliver(self, client: Any, item: _Delivery) -> None:
        target = self.policy.check(item.url)  # again: what the name resolves to now
        body = json.dumps(item.event).encode()
        response = client.post(
            target.pinned_url(),  # the checked address, not a second lookup
            content=body,
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            headers={
                "Host": target.host_header(),
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self._secret, body),
                "X-Imagenodes-Event": item.event["type"],
                # Durable events by their seq; a transient one (seq None) by its time.
                "X-Imagenodes-Delivery": f"{item.event['job_id']}:"
                f"{item.event['seq'] if item.event.get('seq') is not None else item.event['ts']}",
            },
        )
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}")


class _Retryable(Exception):
    pass
