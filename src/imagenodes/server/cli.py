"""``imagenodes serve``: the builder service on uvicorn.

Installed by :func:`imagenodes.cli.build_parser` through ``add_commands`` when the
``server`` extra is installed (FastAPI and uvicorn import lazily, so ``--help`` works
without them and says how to install them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from imagenodes.cli import EXIT_OK, open_host
from imagenodes.errors import InputError


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import uvicorn

        from imagenodes.server.app import create_app
        from imagenodes.server.settings import ServerSettings
    except ImportError as exc:
        raise InputError(
            f"the server extra is not installed ({exc.name}); pip install 'imagenodes[server]'",
            field="serve",
        ) from None
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        state_dir=Path(args.state) if args.state else None,
        token=args.token,
        workers=args.workers,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue,
        on_restart=args.on_restart,
        max_attempts=args.max_attempts,
        job_timeout=args.job_timeout,
        cors_origins=tuple(args.cors_origin or ()),
        webhook_allow=tuple(args.webhook_allow or ()),
        webhook_allow_private=args.webhook_allow_private,
        webhook_secret=args.webhook_secret,
    )
    try:
        settings.check_bind()
    except ValueError as exc:
        raise InputError(str(exc), field="--host") from None
    if args.serve_workspace:
        args.workspace = args.serve_workspace
    host = open_host(args)
    app = create_app(host, settings)
    sys.stderr.write(
        f"imagenodes serving http://{_url_host(settings.host)}:{settings.port}/v1 "
        f"(workspace {host.workspace.url}, {settings.workers} worker(s))\n"
    )
    sys.stderr.flush()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    return EXIT_OK


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the nodes to builders over HTTP (server extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--workspace", dest="serve_workspace", default=None, help="workspace URL")
    p.add_argument("--state", default=None, help="state dir (queue database)")
    p.add_argument("--token", default=None, help="bearer token (or IMAGENODES_TOKEN)")
    p.add_argument("--workers", type=int, default=1, help="jobs run at once")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=20.0,
        help="with several workers: compatible jobs within this window share one call",
    )
    p.add_argument("--max-queue", type=int, default=100, help="queued jobs before 429")
    p.add_argument("--on-restart", choices=("requeue", "fail"), default="requeue")
    p.add_argument("--max-attempts", type=int, default=3, help="attempts across restarts")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds per job")
    p.add_argument(
        "--cors-origin", action="append", default=None, help="allowed browser origin (repeat)"
    )
    p.add_argument(
        "--webhook-allow", action="append", default=None, help="webhook host[:port] (repeat)"
    )
    p.add_argument(
        "--webhook-allow-private",
        action="store_true",
        help="let webhooks reach private/loopback addresses",
    )
    p.add_argument("--webhook-secret", default=None, help="HMAC secret for webhook signatures")
    p.set_defaults(func=cmd_serve)
