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
from typing import TYPE_CHECKING, Any, TextIO

from imagenodes.cli import EXIT_OK, open_host
from imagenodes.errors import InputError
from imagenodes.sdk import hookimpl

if TYPE_CHECKING:
    from imagenodes.registry.host import Host
    from imagenodes.server.settings import ServerSettings

#: The ``dest`` of every flag that sets a :class:`ServerSettings` field: the dest is the
#: field's name, and the flag's default is ``argparse.SUPPRESS``, so only the flags the
#: user gave reach the settings (whose class holds every default, once).
_SETTINGS_DESTS: set[str] = set()


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The service settings: the flags given, over ``IMAGENODES_*`` variables, over the
    config file (``--config`` or ``IMAGENODES_CONFIG``), over the defaults.

    A bad value from any of them is INVALID_INPUT naming its flag (``--replicas``).
    """
    from imagenodes.server.settings import ServerSettings

    # None is "not given": the global flags (``imagenodes --workspace W --connections C
    # serve``) default to it, and it must not hide IMAGENODES_WORKSPACE or the file's.
    given: dict[str, Any] = {
        dest: value for dest in _SETTINGS_DESTS if (value := getattr(args, dest, None)) is not None
    }
    if getattr(args, "connections", None) is not None:
        given["connections_file"] = args.connections
    return ServerSettings.load(config=getattr(args, "config", None), **given)


def _open_host(args: argparse.Namespace, settings: ServerSettings) -> Host:
    """The host of the settings' workspace, opened as every command opens one
    (:func:`imagenodes.cli.open_host`: the global URL policy flags apply too)."""
    scoped = argparse.Namespace(**vars(args))
    scoped.workspace = settings.workspace
    scoped.connections = settings.connections_file
    return open_host(scoped)


def _import_server() -> None:
    try:
        import fastapi  # noqa: F401
        import pydantic_settings  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"the server extra is not installed ({exc.name}); pip install 'imagenodes[server]'",
            field="serve",
        ) from None


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    _import_server()
    from imagenodes.server import serving
    from imagenodes.server.app import create_app
    from imagenodes.server.compose import build_service, open_service_store

    settings = settings_from_args(args)
    try:
        settings.check_bind()
    except ValueError as exc:
        raise InputError(str(exc), field="--host") from None
    host = _open_host(args, settings)
    store = open_service_store(settings, host)
    try:
        if settings.workers == 0 and not store.shared:
            raise InputError(
                "--workers 0 (API only) needs a shared queue that worker processes also use: "
                "--queue postgresql://…",
                field="--workers",
            )
        service = build_service(settings, host=host, store=store)
        settings = service.settings  # workers resolved for the host
        app = create_app(service=service)
    except BaseException:
        store.close()
        raise
    sys.stderr.write(
        f"imagenodes serving http://{_url_host(settings.host)}:{settings.port}/v1 "
        f"(workspace {host.workspace.url}, queue {_queue_name(settings)}, "
        f"{settings.workers} worker(s), executor {settings.executor})\n"
    )
    from imagenodes.server.protocols.comfy.frontend import install_hint

    hint = install_hint()  # the ComfyUI editor at /comfy/ is an extra (docs/comfyui.md)
    if hint:
        sys.stderr.write(f"imagenodes: {hint}\n")
    sys.stderr.flush()
    try:
        # serving.Server: uvicorn with the limits of the settings (header and idle
        # timeouts, connection and WebSocket caps) and a shutdown that first ends the
        # event streams with stream.reconnect, so SIGTERM does not wait on them.
        server = serving.Server(serving.config(app, settings, log_level="warning"), service)
        server.run()
        if not server.started:
            return serving.STARTUP_FAILURE  # uvicorn logged why (a port in use, …)
    finally:
        store.close()
    return EXIT_OK


def cmd_worker(args: argparse.Namespace, out: TextIO) -> int:
    """``imagenodes worker``: run jobs from a shared queue, serve no HTTP.

    The scaled-out service's other half (docs/scaling.md): API processes (``serve
    --workers 0``) take submissions and stream events; worker processes claim jobs from
    the same database, run them through the same JobService as ``serve`` does (both
    built by :func:`imagenodes.server.compose.build_service`) and write outputs to the
    shared workspace.  SIGTERM or SIGINT stops it gracefully: the running jobs are
    cancelled and re-queued (same seed) for another worker.
    """
    _import_server()
    from imagenodes.server.compose import build_service, open_service_store
    from imagenodes.server.store import redact_url

    settings = settings_from_args(args)
    if not settings.queue:
        raise InputError(
            "imagenodes worker needs the queue it shares with the API processes: "
            "--queue postgresql://…",
            field="--queue",
        )
    if settings.workers < 1:
        raise InputError(f"--workers must be 1 or more (got {settings.workers})", field="--workers")
    host = _open_host(args, settings)
    store = open_service_store(settings, host)
    try:
        if not store.shared:
            raise InputError(
                "imagenodes worker needs a queue several processes share: --queue postgresql://…",
                field="--queue",
            )
        service = build_service(settings, host=host, store=store)
    except BaseException:
        store.close()
        raise
    settings = service.settings
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        service.start()
        sys.stderr.write(
            f"imagenodes worker {service.owner} running {settings.workers} worker(s) on "
            f"{redact_url(settings.queue or '')} (workspace {host.workspace.url}, "
            f"executor {settings.executor})\n"
        )
        sys.stderr.flush()
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


# -- flags ----------------------------------------------------------------------------------
class _SettingsHelp(argparse.HelpFormatter):
    """Shows each settings flag's default, read from :class:`ServerSettings` only when
    help is printed: the defaults live once, in the settings class, and building the
    parser (every ``imagenodes`` command does) imports nothing of the server."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest in _SETTINGS_DESTS and "(default" not in text:
            default = _settings_default(action.dest)
            if default is not None:
                text += f" (default: {default})".replace("%", "%%")
        return text


def _settings_default(field: str) -> str | None:
    try:
        from imagenodes.server.settings import ServerSettings
    except ImportError:  # the server extra is missing: help still works
        return None
    value = ServerSettings.default_of(field)
    if value in (None, (), "", False):
        return None
    return str(value)


def _setting(p: argparse.ArgumentParser, flag: str, dest: str, **kwargs: Any) -> None:
    """A flag for the settings field ``dest``; absent unless given (no default here)."""
    _SETTINGS_DESTS.add(dest)
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, **kwargs)


def _add_queue_options(p: argparse.ArgumentParser) -> None:
    """The flags ``serve`` and ``worker`` share: config, workspace, queue and how jobs
    run.  Values are validated by the settings class (so a bad one is the same coded
    error whether it came from a flag, the environment or the config file)."""
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of settings (keys as the settings' names: workers = 4); flags and "
        "IMAGENODES_* variables win over it (default: $IMAGENODES_CONFIG)",
    )
    _setting(
        p,
        "--workspace",
        "workspace",
        help="workspace URL (default: $IMAGENODES_WORKSPACE or ./workspace)",
    )
    _setting(
        p,
        "--state",
        "state_dir",
        help="state dir: SQLite queue, webhook secret (default: <workspace>/.server)",
    )
    _setting(
        p,
        "--queue",
        "queue",
        help="job queue: postgresql://user@host/db (shared by several processes) or "
        "sqlite:///path (default: SQLite in the state dir)",
    )
    _setting(
        p,
        "--workers",
        "workers",
        help="jobs run at once (default: the model family's per-call image limit, so "
        "concurrent compatible jobs share pipeline calls; with --executor ray, one per "
        "replica job slot; 0 = API only)",
    )
    _setting(
        p,
        "--executor",
        "executor",
        help="where jobs generate: local (this process) or ray / ray://host:port "
        "(replicas on a Ray cluster; the ray extra)",
    )
    _setting(p, "--replicas", "replicas", help="with --executor ray: replicas")
    _setting(
        p,
        "--replica-jobs",
        "replica_jobs",
        help="with --executor ray: jobs a replica runs at once, batched into shared "
        "pipeline calls (--batch-window-ms)",
    )
    _setting(
        p,
        "--replica-threads",
        "replica_threads",
        help="with --executor ray: torch threads per CPU replica (default: torch's)",
    )
    _setting(
        p,
        "--batch-window-ms",
        "batch_window_ms",
        help="with several workers: compatible jobs within this window share one call",
    )
    _setting(
        p,
        "--on-restart",
        "on_restart",
        metavar="{requeue,fail}",
        help="what a job running when the service died becomes",
    )
    _setting(p, "--max-attempts", "max_attempts", help="attempts across restarts")
    _setting(
        p,
        "--lease-s",
        "lease_s",
        help="seconds a job's lease lasts without a heartbeat (a dead worker's jobs are "
        "re-queued after this)",
    )
    _setting(p, "--job-timeout", "job_timeout", help="seconds per job")
    _setting(
        p, "--webhook-allow", "webhook_allow", action="append", help="webhook host[:port] (repeat)"
    )
    _setting(
        p,
        "--webhook-allow-private",
        "webhook_allow_private",
        action="store_true",
        help="let webhooks reach private/loopback addresses",
    )
    _setting(
        p,
        "--webhook-secret",
        "webhook_secret",
        help="HMAC secret for webhook signatures (or IMAGENODES_WEBHOOK_SECRET)",
    )


@hookimpl
def register_commands(subparsers: Any) -> None:
    """This module's sub-commands, added through the hook as a pack's would be (its
    entry point is in the ``imagenodes.commands`` group)."""
    add_commands(subparsers)


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the nodes to builders over HTTP (server extra)",
        formatter_class=_SettingsHelp,
    )
    _setting(p, "--host", "host", help="address to bind")
    _setting(p, "--port", "port", help="port to bind")
    _setting(p, "--token", "token", help="bearer token (or IMAGENODES_TOKEN)")
    _add_queue_options(p)
    _setting(p, "--max-queue", "max_queue", help="queued jobs before 429")
    _setting(p, "--max-wait-s", "max_wait_s", help="longest Prefer: wait=N honoured (seconds)")
    _setting(
        p,
        "--preload",
        "preload",
        action="store_true",
        help="load the default model at start-up (readyz says READY once it is loaded)",
    )
    _setting(
        p,
        "--header-timeout-s",
        "header_timeout_s",
        help="seconds a connection may take to send a request's headers (from when it "
        "opened or its previous response ended) before it is closed",
    )
    _setting(p, "--keep-alive-s", "keep_alive_s", help="idle keep-alive connection timeout")
    _setting(
        p,
        "--max-connections",
        "max_connections",
        help="connections plus running requests beyond which new requests get 503",
    )
    _setting(
        p,
        "--graceful-shutdown-s",
        "graceful_shutdown_s",
        help="seconds SIGTERM waits for open requests (event streams end at once)",
    )
    _setting(
        p,
        "--ws-max-message-bytes",
        "ws_max_message_bytes",
        help="largest WebSocket message read (larger: PAYLOAD_TOO_LARGE; over 16x: closed 1009)",
    )
    _setting(p, "--ws-max-subscriptions", "ws_max_subscriptions", help="jobs one WebSocket follows")
    _setting(
        p,
        "--read-threads",
        "read_threads",
        help="threads for store reads (event streams, job views, readiness)",
    )
    _setting(
        p, "--work-threads", "work_threads", help="threads for slow work (uploads, file reads)"
    )
    _setting(
        p, "--cors-origin", "cors_origins", action="append", help="allowed browser origin (repeat)"
    )
    _setting(
        p,
        "--allowed-host",
        "allowed_hosts",
        action="append",
        help="host name (name or name:port) answered without a token besides loopback "
        "(repeat; other Host headers get 421)",
    )
    p.set_defaults(func=cmd_serve)

    w = sub.add_parser(
        "worker",
        help="run jobs from a shared queue without serving HTTP (--queue postgresql://…)",
        formatter_class=_SettingsHelp,
    )
    _add_queue_options(w)
    w.set_defaults(func=cmd_worker)
