"""Settings of the builder service (``imagenodes serve`` flags, or ``create_app``)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TOKEN_ENV = "IMAGENODES_TOKEN"
WEBHOOK_SECRET_ENV = "IMAGENODES_WEBHOOK_SECRET"


@dataclass(frozen=True)
class ServerSettings:
    """Everything the service is configured with; defaults are the safe ones."""

    host: str = "127.0.0.1"
    port: int = 8188
    #: SQLite queue and other service state (default: ``<workspace>/.server`` for local
    #: workspaces, else ``./.imagenodes-server``).
    state_dir: Path | None = None
    #: The job queue: None (SQLite in the state dir), ``sqlite:///path`` or
    #: ``postgresql://…``, which several API and worker processes can share.
    queue: str | None = None
    #: Bearer token every endpoint but /healthz requires (default ``IMAGENODES_TOKEN``).
    token: str | None = None
    #: Jobs this process runs at once; 0 makes an API-only process (a shared queue's
    #: workers are other processes: ``imagenodes worker``).
    workers: int = 1
    #: Where node jobs generate: ``local`` (this process) or ``ray`` / ``ray://address``
    #: (replicas on a Ray cluster holding warm pipelines; docs/scaling.md).
    executor: str = "local"
    #: Ray replicas (actors), each running ``replica_jobs`` jobs at a time.
    replicas: int = 1
    #: Jobs each Ray replica runs at once; above 1 it batches compatible ones into
    #: shared pipeline calls (``batch_window_ms``).
    replica_jobs: int = 1
    #: torch threads per CPU replica (None: torch's default).
    replica_threads: int | None = None
    #: The connections TOML the service was started with (``--connections``), for Ray
    #: replicas to open the same connections.
    connections_file: str | None = None
    #: With several workers, compatible jobs arriving within this window share one
    #: pipeline call (cross-request batching); 0 turns it off.
    batch_window_ms: float = 20.0
    #: Queued jobs beyond which ``POST /jobs`` answers 429.
    max_queue: int = 100
    on_restart: Literal["requeue", "fail"] = "requeue"
    #: Attempts a job gets across restarts before it is failed.
    max_attempts: int = 3
    #: Seconds a worker's lease lasts without a heartbeat.
    lease_s: float = 30.0
    #: Per-job timeout in seconds (None = the node's own).
    job_timeout: float | None = 600.0
    cors_origins: tuple[str, ...] = ()
    #: Request bodies larger than this are refused with 413 before they are read.
    max_body_bytes: int = 1 * 1024 * 1024
    max_upload_bytes: int = 20 * 1024 * 1024
    #: Longest ``Prefer: wait=N`` honoured.
    max_wait_s: float = 60.0
    #: Hosts (``host`` or ``host:port``) webhooks may be sent to; none by default.
    webhook_allow: tuple[str, ...] = ()
    #: Allow webhook destinations that resolve to private/loopback addresses.
    webhook_allow_private: bool = False
    #: HMAC secret for webhook signatures (default IMAGENODES_WEBHOOK_SECRET, else one
    #: generated once and kept in the state dir).
    webhook_secret: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def resolved_token(self) -> str | None:
        return self.token or os.environ.get(TOKEN_ENV) or None

    def resolved_webhook_secret(self) -> str | None:
        return self.webhook_secret or os.environ.get(WEBHOOK_SECRET_ENV) or None

    def check_bind(self) -> None:
        """Refuse to listen beyond loopback without a token (the default is local only)."""
        if not is_loopback(self.host) and not self.resolved_token():
            raise ValueError(
                f"refusing to listen on {self.host!r} without a token: pass --token or set "
                f"{TOKEN_ENV} (only 127.0.0.1 / ::1 / localhost may run without one)"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
