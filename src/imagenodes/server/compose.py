"""The composition root of the builder service: settings in, a wired JobService out.

``imagenodes serve``, ``imagenodes worker`` and ``create_app`` all build their service
here, so the host, the queue, the webhook sender, the executor and the number of
workers are chosen one way whichever process runs it::

    service = build_service(ServerSettings.load(config="service.toml"))
    service.start()            # (create_app starts it with the app's lifespan)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imagenodes.server.settings import ServerSettings

if TYPE_CHECKING:
    from imagenodes.registry.host import Host
    from imagenodes.server.executor import Executor
    from imagenodes.server.service import JobService
    from imagenodes.server.store import JobStore, SQLJobStore


def default_state_dir(host: Host) -> Path:
    """Where the service keeps its state when ``--state`` is not given: next to the
    workspace when that is a local folder (``<workspace>/.server``), else in the
    current directory (a remote workspace is no place for a SQLite file)."""
    root = getattr(host.workspace, "root", None)
    if host.workspace.is_local and root:
        return Path(root) / ".server"
    return Path(".imagenodes-server")


def state_dir(settings: ServerSettings, host: Host) -> Path:
    """``settings.state_dir``, else :func:`default_state_dir`."""
    return Path(settings.state_dir) if settings.state_dir else default_state_dir(host)


def open_service_host(settings: ServerSettings) -> Host:
    """The host of ``settings.workspace`` (default ``$IMAGENODES_WORKSPACE`` or
    ``./workspace``) and ``settings.connections_file``, as ``imagenodes --workspace …
    --connections …`` opens it (the CLI passes its own, which also has the URL policy
    flags)."""
    from imagenodes.registry.host import Host

    return Host(settings.workspace, connections_file=settings.connections_file)


def open_service_store(settings: ServerSettings, host: Host) -> SQLJobStore:
    """The queue ``settings.queue`` names (SQLite in the state dir by default)."""
    from imagenodes.server.backends import open_store

    return open_store(settings.queue, state_dir(settings, host))


def build_service(
    settings: ServerSettings,
    *,
    host: Host | None = None,
    store: JobStore | None = None,
    executor: Executor | None = None,
) -> JobService:
    """The service ``settings`` describe, wired and not yet started.

    Opens what is not given: the host (:func:`open_service_host`), the store
    (:func:`open_service_store`; a store passed in stays the caller's to close, one
    opened here is closed with the service's owner, i.e. ``service.store.close()``)
    and the executor (``settings.executor``; one passed in is the caller's to start
    and close).  The webhook signing secret is ``settings.webhook_secret`` or the one
    kept in the state dir.

    The service gets its settings with ``workers`` resolved for the host
    (:meth:`ServerSettings.resolved_workers`): when nobody asked for a number, the
    default connection's per-call image limit, so concurrent compatible jobs share
    pipeline calls.  ``service.settings`` is therefore what the service really runs
    with; ``service.host`` and ``service.store`` are the ones it uses.
    """
    from imagenodes.server.service import JobService
    from imagenodes.server.webhooks import WebhookPolicy, WebhookSender, load_secret

    host = host if host is not None else open_service_host(settings)
    workers = settings.resolved_workers(host)
    if workers != settings.workers:
        settings = settings.model_copy(update={"workers": workers})
    state = state_dir(settings, host)
    opened = store is None
    store = store if store is not None else open_service_store(settings, host)
    try:
        webhooks = WebhookSender(
            load_secret(state, settings.resolved_webhook_secret()),
            WebhookPolicy(settings.webhook_allow, settings.webhook_allow_private),
        )
        service = JobService(host, settings, store, webhooks, executor)
    except BaseException:
        if opened:
            store.close()
        raise
    store.on_event = service.published
    return service
