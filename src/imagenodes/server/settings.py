"""Settings of the builder service (``imagenodes serve`` / ``imagenodes worker`` flags,
or ``create_app``).

One pydantic-settings class holds every setting, its default and its bounds, so the
CLI flags, the environment and a config file cannot drift apart.  Sources, highest
first:

1. keyword arguments (``ServerSettings(workers=2)``; the CLI passes only the flags the
   user gave),
2. ``IMAGENODES_<FIELD>`` environment variables (``IMAGENODES_TOKEN``,
   ``IMAGENODES_WEBHOOK_SECRET``, ``IMAGENODES_MAX_WAIT_S``, …; lists as JSON, empty
   values ignored),
3. a TOML file of the same keys (``workers = 4``), named by ``--config`` /
   :meth:`ServerSettings.load` or ``IMAGENODES_CONFIG``,
4. the defaults below.

A bad value from any source is a pydantic ``ValidationError``; :func:`settings_error`
turns it into the library's coded ``INVALID_INPUT`` naming the flag and where the
value came from, which is what the CLI reports.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imagenodes.errors import InputError

if TYPE_CHECKING:
    from imagenodes.registry.host import Host

ENV_PREFIX = "IMAGENODES_"
TOKEN_ENV = "IMAGENODES_TOKEN"
WEBHOOK_SECRET_ENV = "IMAGENODES_WEBHOOK_SECRET"
#: The config file read when ``--config`` is not given.
CONFIG_ENV = "IMAGENODES_CONFIG"

#: The CLI flag of each setting that has one (errors name the flag the user can fix).
FLAGS: dict[str, str] = {
    "host": "--host",
    "port": "--port",
    "workspace": "--workspace",
    "state_dir": "--state",
    "queue": "--queue",
    "token": "--token",
    "workers": "--workers",
    "executor": "--executor",
    "replicas": "--replicas",
    "replica_jobs": "--replica-jobs",
    "replica_threads": "--replica-threads",
    "connections_file": "--connections",
    "batch_window_ms": "--batch-window-ms",
    "max_queue": "--max-queue",
    "on_restart": "--on-restart",
    "max_attempts": "--max-attempts",
    "lease_s": "--lease-s",
    "job_timeout": "--job-timeout",
    "cors_origins": "--cors-origin",
    "allowed_hosts": "--allowed-host",
    "max_wait_s": "--max-wait-s",
    "preload": "--preload",
    "header_timeout_s": "--header-timeout-s",
    "keep_alive_s": "--keep-alive-s",
    "max_connections": "--max-connections",
    "graceful_shutdown_s": "--graceful-shutdown-s",
    "ws_max_message_bytes": "--ws-max-message-bytes",
    "ws_max_subscriptions": "--ws-max-subscriptions",
    "read_threads": "--read-threads",
    "work_threads": "--work-threads",
    "webhook_allow": "--webhook-allow",
    "webhook_allow_private": "--webhook-allow-private",
    "webhook_secret": "--webhook-secret",
}

#: The ``solution`` of every settings error.
SOLUTION = (
    "Fix the named flag, its IMAGENODES_* environment variable or its key in the config "
    "file (docs/server.md lists them with their ranges)"
)


#: The config file of the settings being built (``ServerSettings.load(config=…)``);
#: a context variable because pydantic-settings asks for the sources on the class.
_config_file: ContextVar[Path | None] = ContextVar("imagenodes_server_config", default=None)


def config_file() -> Path | None:
    """The TOML file the settings read: ``--config`` (via :meth:`ServerSettings.load`),
    else ``IMAGENODES_CONFIG``, else none.  A named file must exist: a typo in the path
    would otherwise silently start a service with the defaults."""
    path = _config_file.get()
    if path is None:
        named = os.environ.get(CONFIG_ENV)
        path = Path(named) if named else None
    if path is not None and not path.is_file():
        raise InputError(
            f"config file {str(path)!r} does not exist (--config / {CONFIG_ENV})",
            field="--config",
            solution=SOLUTION,
        )
    return path


class _EnvSource(EnvSettingsSource):
    """``IMAGENODES_*`` variables; a list setting (``IMAGENODES_CORS_ORIGINS``,
    ``IMAGENODES_WEBHOOK_ALLOW``) may be comma-separated as well as a JSON array."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
            return [part.strip() for part in value.split(",") if part.strip()]
        return super().decode_complex_value(field_name, field, value)


def _default_workers(executor: str, replicas: int, replica_jobs: int) -> int:
    """Workers when none are asked for, before the host is known.

    Locally: the embedded profile's per-call limit, so that many concurrent compatible
    jobs can share one pipeline call (cross-request batching is on whenever there is
    more than one worker); :meth:`ServerSettings.resolved_workers` refines it to the
    default connection's family.  On Ray a worker thread only dispatches, so one per
    replica job slot keeps every slot busy.
    """
    if executor == "local":
        from imagenodes.registry.host import embedded_batch_limit

        return embedded_batch_limit()
    return replicas * replica_jobs


class ServerSettings(BaseSettings):
    """Everything the service is configured with; defaults are the safe ones.

    Immutable: derive a changed copy with ``settings.model_copy(update={...})``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # IMAGENODES_TOKEN="" means "no token", not "token ''"
        extra="forbid",  # a misspelt key in the config file is an error, not ignored
        frozen=True,
    )

    host: str = "127.0.0.1"
    #: 0 binds any free port (tests).
    port: int = Field(default=8188, ge=0, le=65535)
    #: The workspace ``build_service`` opens when it is not given a host (default
    #: ``$IMAGENODES_WORKSPACE`` or ``./workspace``, as ``imagenodes --workspace``).
    workspace: str | None = None
    #: SQLite queue and other service state (default: ``<workspace>/.server`` for local
    #: workspaces, else ``./.imagenodes-server``).
    state_dir: Path | None = None
    #: The job queue: None (SQLite in the state dir), ``sqlite:///path`` or
    #: ``postgresql://…``, which several API and worker processes can share.
    queue: str | None = None
    #: Bearer token every endpoint but /healthz requires (env ``IMAGENODES_TOKEN``).
    token: str | None = Field(default=None, repr=False)
    #: Where node jobs generate: ``local`` (this process) or ``ray`` / ``ray://address``
    #: (replicas on a Ray cluster holding warm pipelines; docs/scaling.md).
    executor: str = "local"
    #: Ray replicas (actors), each running ``replica_jobs`` jobs at a time.
    replicas: int = Field(default=1, ge=1)
    #: Jobs each Ray replica runs at once; above 1 it batches compatible ones into
    #: shared pipeline calls (``batch_window_ms``).
    replica_jobs: int = Field(default=1, ge=1)
    #: torch threads per CPU replica (None: torch's default).
    replica_threads: int | None = Field(default=None, ge=1)
    #: Jobs this process runs at once; 0 makes an API-only process (a shared queue's
    #: workers are other processes: ``imagenodes worker``).  None (the default) means:
    #: locally, the default model family's per-call image limit — concurrent
    #: compatible jobs then share pipeline calls — and with Ray, replicas × replica
    #: jobs.  The attribute always holds a number: before a host is known, the
    #: embedded family's limit; :meth:`resolved_workers` gives the host's.
    workers: int = Field(default=None, validate_default=True, ge=0)
    #: The connections TOML the service was started with (``--connections``), for Ray
    #: replicas to open the same connections.
    connections_file: str | None = None
    #: With several workers, compatible jobs arriving within this window share one
    #: pipeline call (cross-request batching); 0 turns it off.
    batch_window_ms: float = Field(default=20.0, ge=0)
    #: Queued jobs beyond which ``POST /jobs`` answers 429.
    max_queue: int = Field(default=100, ge=1)
    #: What a job that was running when the service died becomes.
    on_restart: Literal["requeue", "fail"] = "requeue"
    #: Attempts a job gets across restarts before it is failed.
    max_attempts: int = Field(default=3, ge=1)
    #: Seconds a worker's lease lasts without a heartbeat.
    lease_s: float = Field(default=30.0, gt=0)
    #: Per-job timeout in seconds (None = the node's own).
    job_timeout: float | None = Field(default=600.0, gt=0)
    #: Browser origins allowed to call the API.
    cors_origins: tuple[str, ...] = ()
    #: Host names (``name``: any port, or ``name:port``) answered without a token besides
    #: the loopback ones; any other ``Host`` is 421 UNTRUSTED_HOST (DNS rebinding).
    #: With a token, every Host is answered.
    allowed_hosts: tuple[str, ...] = ()
    #: Deepest nesting of arrays/objects in a JSON body (deeper: 400 INVALID_JSON).
    max_json_depth: int = Field(default=64, ge=1, le=512)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from imagenodes.server.security import split_host

        for entry in value:
            if split_host(entry) is None:
                raise ValueError(f"{entry!r} is not a host name (name or name:port, no scheme)")
        return tuple(entry.strip().lower() for entry in value)

    #: Request bodies larger than this are refused with 413 before they are read.
    max_body_bytes: int = Field(default=1 * 1024 * 1024, gt=0)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    #: Longest ``Prefer: wait=N`` honoured (seconds).
    max_wait_s: float = Field(default=60.0, gt=0)
    #: Load the default connection's model at start-up (``/v1/readyz`` answers READY
    #: once it is loaded), so the first job does not pay the load.
    preload: bool = False
    #: Seconds a connection may take to send a request's line and headers, counted
    #: from when it opened or its previous response ended; then it is closed (idle
    #: and slowloris connections cannot pile up).  uvicorn itself has no such timer.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds an idle keep-alive connection stays open after a response (uvicorn's
    #: ``timeout_keep_alive``).
    keep_alive_s: int = Field(default=5, ge=1)
    #: Connections plus running requests beyond which new requests get uvicorn's 503
    #: (``limit_concurrency``): the memory of a flood stays bounded.
    max_connections: int = Field(default=1000, ge=1)
    #: Seconds a SIGTERM waits for open requests before cancelling them (uvicorn's
    #: ``timeout_graceful_shutdown``; event streams end at once with
    #: ``stream.reconnect``).
    graceful_shutdown_s: int = Field(default=30, ge=1)
    #: Largest WebSocket message read; a larger one (up to 16 times this) is answered
    #: with PAYLOAD_TOO_LARGE and ignored, beyond that the socket is closed (1009).
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    #: Jobs one WebSocket follows at once.
    ws_max_subscriptions: int = Field(default=100, ge=1)
    #: Threads for short store reads (event streams, job views, readiness), apart from
    #: the slow work so that slow uploads cannot starve them (server/pools.py).
    read_threads: int = Field(default=4, ge=1)
    #: Threads for slow blocking work: decoding uploads, reading files.
    work_threads: int = Field(default=2, ge=1)
    #: Hosts (``host`` or ``host:port``) webhooks may be sent to; none by default.
    webhook_allow: tuple[str, ...] = ()
    #: Allow webhook destinations that resolve to private/loopback addresses.
    webhook_allow_private: bool = False
    #: HMAC secret for webhook signatures (env ``IMAGENODES_WEBHOOK_SECRET``; else one
    #: generated once and kept in the state dir).
    webhook_secret: str | None = Field(default=None, repr=False)
    #: Free-form values for an embedding application (the service reads none).
    extra: dict[str, str] = Field(default_factory=dict)

    # -- sources ----------------------------------------------------------------------
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments > ``IMAGENODES_*`` > the TOML config file > defaults (no
        dotenv or secrets directory: the config file is the one file source)."""
        env = _EnvSource(settings_cls)
        path = config_file()
        if path is None:
            return init_settings, env
        return init_settings, env, TomlConfigSettingsSource(settings_cls, path)

    @classmethod
    def load(cls, config: str | os.PathLike[str] | None = None, **values: Any) -> ServerSettings:
        """The settings from every source, with ``config`` (``--config``) as the config
        file instead of ``IMAGENODES_CONFIG``; ``values`` (the flags given) win over
        everything.

        Raises the library's INVALID_INPUT naming the flag of a bad value and where it
        came from (:func:`settings_error`), never pydantic's error.
        """
        with _using_config(Path(config) if config else None):
            try:
                return cls(**values)
            except ValueError as exc:  # ValidationError, SettingsError, TOMLDecodeError
                raise settings_error(exc, given=values) from None

    # -- validation -------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _none_means_default(cls, data: Any) -> Any:
        # An explicit ``workers=None`` is "the default" too, and must not count as given
        # (resolved_workers refines only a number nobody asked for).
        if isinstance(data, Mapping) and "workers" in data and data["workers"] is None:
            return {k: v for k, v in data.items() if k != "workers"}
        return data

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        # executor, replicas and replica_jobs are declared above, so they are here when
        # they were valid (an invalid one is reported on its own).
        return _default_workers(
            str(info.data.get("executor", "local")),
            int(info.data.get("replicas", 1)),
            int(info.data.get("replica_jobs", 1)),
        )

    @field_validator("token", "webhook_secret")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    # -- derived ----------------------------------------------------------------------
    @property
    def workers_given(self) -> bool:
        """Whether a source set ``workers`` (else it is the default)."""
        return "workers" in self.model_fields_set

    def resolved_workers(self, host: Host) -> int:
        """The workers the service runs on ``host``: the number asked for, else the
        default — with the local executor, the per-call image limit of the default
        connection's model family (so that many concurrent compatible jobs share one
        pipeline call); with Ray, replicas × replica jobs."""
        if self.workers_given or self.executor != "local":
            return self.workers
        return max(1, host.default_profile().max_images_per_call)

    def resolved_token(self) -> str | None:
        """The bearer token (``--token``, ``IMAGENODES_TOKEN`` or the config file)."""
        return self.token or None

    def resolved_webhook_secret(self) -> str | None:
        """The webhook signing secret the sources gave (None: the state dir's)."""
        return self.webhook_secret or None

    def check_bind(self) -> None:
        """Refuse to listen beyond loopback without a token (the default is local only)."""
        if not is_loopback(self.host) and not self.resolved_token():
            raise ValueError(
                f"refusing to listen on {self.host!r} without a token: pass --token or set "
                f"{TOKEN_ENV} (only 127.0.0.1 / ::1 / localhost may run without one)"
            )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a setting (``IMAGENODES_MAX_WAIT_S``)."""
        return f"{ENV_PREFIX}{field.upper()}"

    @classmethod
    def default_of(cls, field: str) -> Any:
        """A setting's default as the help texts show it (None: computed or unset)."""
        info = cls.model_fields[field]
        return None if info.default_factory is not None else info.default


@contextmanager
def _using_config(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


# -- errors -----------------------------------------------------------------------------
def settings_error(
    exc: ValidationError | ValueError, *, given: Mapping[str, Any] | None = None
) -> InputError:
    """The coded INVALID_INPUT for settings that failed to validate: it names the flag
    (``--replicas``) as ``field`` and says where the bad value came from (``given``: the
    values passed as keyword arguments, i.e. the CLI flags; else the environment
    variable, else the config file)."""
    given = given or {}
    if not isinstance(exc, ValidationError):
        # pydantic-settings' SettingsError (a list in an environment variable that is
        # not JSON) or tomllib's (a config file that is not TOML).
        match = re.search(r'field "(\w+)"', str(exc))
        if match:
            name = match.group(1)
            flag = FLAGS.get(name, name)
            return InputError(
                f"{flag}: {exc} (from {_origin(name, given)})", field=flag, solution=SOLUTION
            )
        return InputError(
            f"{_config_origin()} is not valid TOML: {exc}", field="--config", solution=SOLUTION
        )
    problems = []
    first_field: str | None = None
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            label = f"unknown setting {name!r}"
            where = f"in {_config_origin()}" if name not in given else "a keyword argument"
            message = f"{label} ({where}); known: {', '.join(ServerSettings.model_fields)}"
            field = "--config" if name not in given else name
        else:
            flag = FLAGS.get(name, name)
            msg = error["msg"][0].lower() + error["msg"][1:]
            src = "" if name in given else f" from {_origin(name, given)}"
            message = f"{flag}: {msg} (got {error.get('input')!r}{src})"
            field = flag
        problems.append(message)
        first_field = first_field or field
    return InputError(
        "; ".join(problems),
        field=first_field,
        solution=SOLUTION,
        details={"errors": problems} if len(problems) > 1 else None,
    )


def _origin(name: str, given: Mapping[str, Any]) -> str:
    """Which source a setting's value came from (highest first, as they are applied)."""
    if name in given:
        return FLAGS.get(name, f"{name}=")
    env = ServerSettings.env_name(name)
    if os.environ.get(env):
        return env
    return _config_origin()


def _config_origin() -> str:
    try:
        path = config_file()
    except InputError:
        path = None
    return f"the config file {str(path)!r}" if path else "the defaults"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
