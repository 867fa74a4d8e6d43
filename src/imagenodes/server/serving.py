"""How ``imagenodes serve`` runs the app on uvicorn: connection limits, timeouts, and a
shutdown that ends the event streams first.

What uvicorn (0.55) gives and what is added here (docs/security.md, "Event streams and
slow clients"):

* ``timeout_keep_alive`` (``--keep-alive-s``) closes a keep-alive connection that is
  idle *after* a response — but uvicorn has no timer for a connection that never sends
  a request, or sends its request line and headers a byte at a time (slowloris): such
  a connection stays open for ever.  :func:`http_protocol` adds one: a connection must
  send a whole request head within ``--header-timeout-s`` of opening (or of its
  previous response), else it is closed; and a request head over
  :data:`MAX_HEADER_BYTES` is answered 431 (``PAYLOAD_TOO_LARGE``) and closed —
  httptools, uvicorn's parser when installed, has no limit of its own (h11's is set
  to the same number).
* ``limit_concurrency`` (``--max-connections``): connections plus running requests
  beyond which uvicorn answers new requests with 503.  The process's soft limit of open
  files is raised to fit (:func:`raise_fd_limit`): at the limit, the loop cannot accept
  at all (asyncio retries a second later), and a 1024 default is common.
* ``ws_max_size``: 16 × ``--ws-max-message-bytes`` (1 MiB by default); a larger
  WebSocket message is never buffered, the socket is closed with 1009.  Smaller ones
  over the cap get a coded error from the handler (routers/events.py).
* ``timeout_graceful_shutdown`` (``--graceful-shutdown-s``): how long SIGTERM waits.
  uvicorn waits for every open response before the app's shutdown, and an event
  stream never ends on its own, so :class:`Server` first ends the streams (each
  sends ``stream.reconnect``, :meth:`~imagenodes.server.bus.EventBus.end_streams`)
  and then shuts down as uvicorn does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from imagenodes.errors import PayloadTooLarge

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base

    from imagenodes.server.service import JobService
    from imagenodes.server.settings import ServerSettings
else:
    _Base = object

log = logging.getLogger(__name__)

__all__ = [
    "MAX_HEADER_BYTES",
    "STARTUP_FAILURE",
    "Server",
    "config",
    "http_protocol",
    "raise_fd_limit",
]

#: uvicorn's exit status when the server did not start (``uvicorn.run``'s).
STARTUP_FAILURE = 3

#: The longest request line plus headers read (nginx: 32 KiB, Node: 16 KiB).
MAX_HEADER_BYTES = 64 * 1024

#: uvicorn's frame limit as a multiple of ``--ws-max-message-bytes``: messages between
#: the two get a coded PAYLOAD_TOO_LARGE, larger ones close the socket (1009).
WS_FRAME_FACTOR = 16

#: How long a shutdown waits for the event streams to send ``stream.reconnect`` and
#: end before uvicorn's own shutdown (which closes WebSockets at once) begins.
DRAIN_S = 2.0

#: Open files the process needs besides its connections (SQLite, model and workspace
#: files, pipes, the listening socket).
SPARE_FDS = 1024


def raise_fd_limit(wanted: int) -> int | None:
    """Raise the soft limit of open files to ``wanted`` (at most the hard limit); the
    soft limit now, or None where there are no such limits (Windows)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a sandbox that refuses: keep the limit there is
            log.warning("could not raise the open-files limit from %d to %d", soft, target)
    return soft


def config(app: Any, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``settings``; ``options`` (uvicorn's
    own: ``log_level``, …) win."""
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": http_protocol(settings.header_timeout_s),
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "ws_max_size": settings.ws_max_message_bytes * WS_FRAME_FACTOR,
        **options,
    }
    return uvicorn.Config(app, **values)


class Server(uvicorn.Server):
    """uvicorn's server, whose shutdown first ends the service's event streams.

    uvicorn's shutdown stops listening, asks each connection to finish (an idle one
    closes, a response in progress may complete; a WebSocket is closed with 1012 at
    once) and waits for them before the app's lifespan shutdown.  An event stream only
    ends with its job, so it would hold the shutdown until ``--graceful-shutdown-s``
    and then be cut.  Here every stream is told to end first: SSE sends
    ``stream.reconnect`` with ``retry:`` and finishes its response; a WebSocket sends
    it and closes with 1012 — then uvicorn's shutdown proceeds with nothing to wait for.
    """

    def __init__(self, config: uvicorn.Config, service: JobService) -> None:
        super().__init__(config)
        self.service = service

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        raise_fd_limit((self.config.limit_concurrency or 0) + SPARE_FDS)
        super().run(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        bus = self.service.bus
        bus.end_streams()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while bus.streams() and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.02)
        if bus.streams():
            log.warning("%d event stream(s) did not end within %.0f s", bus.streams(), DRAIN_S)
        await super().shutdown(sockets)


class _HeadTooLarge(Exception):
    """Raised from httptools' header callback: its parser turns it into the parse error
    uvicorn answers through ``send_400_response`` (answered 431 here)."""


class _HeaderDeadline(_Base):
    """An HTTP protocol (uvicorn's httptools or h11 one) with a deadline for a request's
    head: armed when the connection opens and when a response ends, disarmed once the
    request line and headers are complete (the request is the app's then) or the
    connection became a WebSocket.  Expired: the connection is closed.

    The head's size is capped too: the bytes that arrive while a head is awaited (a
    head sent in many pieces, which httptools would buffer without limit) and, with
    httptools, the request line and header lines as they are parsed (a head that
    arrives in one piece).  h11 has its own cap (``h11_max_incomplete_event_size``,
    answered 400 by uvicorn)."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = MAX_HEADER_BYTES
    _deadline: asyncio.TimerHandle | None = None
    _head_bytes: int = 0  # received while a head is awaited
    _head_parsed: int = 0  # of the current head, as httptools parsed it
    _head_too_large: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        armed = self._deadline is not None
        super().data_received(data)
        if not armed:
            return
        if self.transport.is_closing() or not self._awaiting_head():
            self._disarm()  # a request to run, an upgrade, or uvicorn refused it (400)
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._disarm()
            self._refuse_head()

    # httptools' parser callbacks (h11 has none of these)
    def on_message_begin(self) -> None:
        self._head_parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.max_header_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._awaiting_head():
            self._arm()  # the next request's head (uvicorn's keep-alive timer runs too)

    def _awaiting_head(self) -> bool:
        """No request in progress on this connection, which is still HTTP."""
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            return False
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing() and self._awaiting_head():
            log.debug("closing %s: no request head within %ss", self.client, self.header_timeout_s)
            self.transport.close()

    def _refuse_head(self) -> None:
        """431 with the coded error, then close (nothing of the request is run)."""
        if self.transport.is_closing():
            return
        error = PayloadTooLarge(
            f"the request line and headers exceed {self.max_header_bytes} bytes",
            field="headers",
            solution="Send fewer or shorter headers (cookies, tokens)",
        )
        body = json.dumps({"error": error.to_dict()}).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


def http_protocol(
    header_timeout_s: float, base: type[asyncio.Protocol] = AutoHTTPProtocol
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with the
    request-head deadline and size cap of :class:`_HeaderDeadline`."""
    return type(
        f"HeaderDeadline{base.__name__}",
        (_HeaderDeadline, base),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": MAX_HEADER_BYTES},
    )
