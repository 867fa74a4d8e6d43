"""``imagenodes serve`` (the builder service on uvicorn) and ``imagenodes worker``.

Installed by :func:`imagenodes.cli.build_parser` through ``add_commands`` when the
``server`` extra is installed (FastAPI and uvicorn import lazily, so ``--help`` works
without them and says how to install them).

On a shared queue (``--queue postgresql://…``) the two commands are the two halves of a
scaled-out service: ``serve --workers 0`` processes answer HTTP only, ``worker``
processes run jobs only, and ``serve --workers N`` does both — any number of each on
one database (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from imagenodes.cli import EXIT_OK, open_host
from imagenodes.errors import InputError

if TYPE_CHECKING:
    from imagenodes.registry.host import Host
    from imagenodes.server.settings import ServerSettings
    from imagenodes.server.store import SQLJobStore


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The service settings the shared flags (and serve's HTTP ones) give."""
    from imagenodes.server.settings import ServerSettings

    if args.replicas < 1:
        raise InputError(f"--replicas must be 1 or more (got {args.replicas})", field="--replicas")
    if args.replica_jobs < 1:
        raise InputError(
            f"--replica-jobs must be 1 or more (got {args.replica_jobs})", field="--replica-jobs"
        )
    # With Ray, a worker thread only dispatches: one per replica slot keeps them all busy.
    workers = (
        args.workers
        if args.workers is not None
        else (1 if args.executor == "local" else args.replicas * args.replica_jobs)
    )
    if workers < 0:
        raise InputError(f"--workers must be 0 or more (got {workers})", field="--workers")
    if args.lease_s <= 0:
        raise InputError(f"--lease-s must be positive (got {args.lease_s})", field="--lease-s")
    return ServerSettings(
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8188),
        state_dir=Path(args.state) if args.state else None,
        queue=args.queue,
        token=getattr(args, "token", None),
        workers=workers,
        executor=args.executor,
        replicas=args.replicas,
        replica_jobs=args.replica_jobs,
        replica_threads=args.replica_threads,
        connections_file=getattr(args, "connections", None),
        batch_window_ms=args.batch_window_ms,
        max_queue=getattr(args, "max_queue", 100),
        on_restart=args.on_restart,
        max_attempts=args.max_attempts,
        lease_s=args.lease_s,
        job_timeout=args.job_timeout,
        cors_origins=tuple(getattr(args, "cors_origin", None) or ()),
        webhook_allow=tuple(args.webhook_allow or ()),
        webhook_allow_private=args.webhook_allow_private,
        webhook_secret=args.webhook_secret,
    )


def open_service_store(settings: ServerSettings, host: Host) -> SQLJobStore:
    """The queue ``--queue`` names (SQLite in the state dir by default)."""
    from imagenodes.server.backends import open_store

    return open_store(settings.queue, state_dir(settings, host))


def state_dir(settings: ServerSettings, host: Host) -> Path:
    """``--state``, else the app's default (``<workspace>/.server`` for a local one)."""
    from imagenodes.server.app import _default_state_dir

    return Path(settings.state_dir) if settings.state_dir else _default_state_dir(host)


def _import_server() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"the server extra is not installed ({exc.name}); pip install 'imagenodes[server]'",
            field="serve",
        ) from None


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    _import_server()
    import uvicorn

    from imagenodes.server.app import create_app

    settings = settings_from_args(args)
    try:
        settings.check_bind()
    except ValueError as exc:
        raise InputError(str(exc), field="--host") from None
    if args.serve_workspace:
        args.workspace = args.serve_workspace
    host = open_host(args)
    store = open_service_store(settings, host)
    if settings.workers == 0 and not store.shared:
        store.close()
        raise InputError(
            "--workers 0 (API only) needs a shared queue that worker processes also use: "
            "--queue postgresql://…",
            field="--workers",
        )
    app = create_app(host, settings, store=store)
    sys.stderr.write(
        f"imagenodes serving http://{_url_host(settings.host)}:{settings.port}/v1 "
        f"(workspace {host.workspace.url}, queue {_queue_name(settings)}, "
        f"{settings.workers} worker(s), executor {settings.executor})\n"
    )
    sys.stderr.flush()
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    finally:
        store.close()
    return EXIT_OK


def cmd_worker(args: argparse.Namespace, out: TextIO) -> int:
    """``imagenodes worker``: run jobs from a shared queue, serve no HTTP.

    The scaled-out service's other half (docs/scaling.md): API processes (``serve
    --workers 0``) take submissions and stream events; worker processes claim jobs from
    the same database, run them through the same JobService as ``serve`` does and write
    outputs to the shared workspace.  SIGTERM or SIGINT stops it gracefully: the running
    jobs are cancelled and re-queued (same seed) for another worker.
    """
    _import_server()
    from imagenodes.server.service import JobService
    from imagenodes.server.store import redact_url
    from imagenodes.server.webhooks import WebhookPolicy, WebhookSender, load_secret

    settings = settings_from_args(args)
    if not settings.queue:
        raise InputError(
            "imagenodes worker needs the queue it shares with the API processes: "
            "--queue postgresql://…",
            field="--queue",
        )
    if settings.workers < 1:
        raise InputError(f"--workers must be 1 or more (got {settings.workers})", field="--workers")
    if args.serve_workspace:
        args.workspace = args.serve_workspace
    host = open_host(args)
    store = open_service_store(settings, host)
    if not store.shared:
        store.close()
        raise InputError(
            "imagenodes worker needs a queue several processes share: --queue postgresql://…",
            field="--queue",
        )
    webhooks = WebhookSender(
        load_secret(state_dir(settings, host), settings.resolved_webhook_secret()),
        WebhookPolicy(settings.webhook_allow, settings.webhook_allow_private),
    )
    service = JobService(host, settings, store, webhooks)
    store.on_event = service.published
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.start()
    sys.stderr.write(
        f"imagenodes worker {service.owner} running {settings.workers} worker(s) on "
        f"{redact_url(settings.queue)} (workspace {host.workspace.url}, "
        f"executor {settings.executor})\n"
    )
    sys.stderr.flush()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        store.close()
    return EXIT_OK


def _queue_name(settings: ServerSettings) -> str:
    from imagenodes.server.store import redact_url

    return redact_url(settings.queue) if settings.queue else "sqlite (state dir)"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _add_queue_options(p: argparse.ArgumentParser) -> None:
    """The flags ``serve`` and ``worker`` share: workspace, queue and how jobs run."""
    p.add_argument("--workspace", dest="serve_workspace", default=None, help="workspace URL")
    p.add_argument("--state", default=None, help="state dir (SQLite queue, webhook secret)")
    p.add_argument(
        "--queue",
        default=None,
        help="job queue: postgresql://user@host/db (shared by several processes) or "
        "sqlite:///path (default: SQLite in the state dir)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="jobs run at once (default 1; with --executor ray, one per replica job slot)",
    )
    p.add_argument(
        "--executor",
        default="local",
        help="where jobs generate: local (this process) or ray / ray://host:port "
        "(replicas on a Ray cluster; the ray extra)",
    )
    p.add_argument("--replicas", type=int, default=1, help="with --executor ray: replicas")
    p.add_argument(
        "--replica-jobs",
        type=int,
        default=1,
        help="with --executor ray: jobs a replica runs at once, batched into shared "
        "pipeline calls (--batch-window-ms)",
    )
    p.add_argument(
        "--replica-threads",
        type=int,
        default=None,
        help="with --executor ray: torch threads per CPU replica",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=20.0,
        help="with several workers: compatible jobs within this window share one call",
    )
    p.add_argument("--on-restart", choices=("requeue", "fail"), default="requeue")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts across restarts")
    p.add_argument(
        "--lease-s",
        type=float,
        default=30.0,
        help="seconds a job's lease lasts without a heartbeat (a dead worker's jobs are "
        "re-queued after this)",
    )
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds per job")
    p.add_argument(
        "--webhook-allow", action="append", default=None, help="webhook host[:port] (repeat)"
    )
    p.add_argument(
        "--webhook-allow-private",
        action="store_true",
        help="let webhooks reach private/loopback addresses",
    )
    p.add_argument("--webhook-secret", default=None, help="HMAC secret for webhook signatures")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the nodes to builders over HTTP (server extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--token", default=None, help="bearer token (or IMAGENODES_TOKEN)")
    _add_queue_options(p)
    p.add_argument("--max-queue", type=int, default=100, help="queued jobs before 429")
    p.add_argument(
        "--cors-origin", action="append", default=None, help="allowed browser origin (repeat)"
    )
    p.set_defaults(func=cmd_serve)

    w = sub.add_parser(
        "worker",
        help="run jobs from a shared queue without serving HTTP (--queue postgresql://…)",
    )
    _add_queue_options(w)
    w.set_defaults(func=cmd_worker)
