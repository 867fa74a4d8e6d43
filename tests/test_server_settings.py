"""The service's settings and its composition root: where each value comes from
(flag > ``IMAGENODES_*`` > the TOML config file > default), bad values as coded errors
naming the flag, the default number of workers, and ``build_service`` as the one
wiring of ``imagenodes serve`` and ``imagenodes worker``.

Nothing here generates: the service is built, never started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from imagenodes import Host
from imagenodes.engine.profiles import EMBEDDED, SD
from imagenodes.errors import InputError
from imagenodes.server import compose
from imagenodes.server.cli import settings_from_args
from imagenodes.server.compose import build_service, default_state_dir
from imagenodes.server.settings import ServerSettings


def parse(*argv: str) -> Any:
    from imagenodes.cli import build_parser

    return build_parser().parse_args(list(argv))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m imagenodes.cli ARGS`` as an operator runs it (no traceback, ever)."""
    proc = subprocess.run(
        [sys.executable, "-m", "imagenodes.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def error_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    error: dict[str, Any] = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "INVALID_INPUT"
    return error


# -- sources and their order ---------------------------------------------------------------
def test_a_flag_beats_the_environment_beats_the_config_file_beats_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "service.toml", "lease_s = 5\nmax_queue = 7\nreplicas = 3\n")
    monkeypatch.setenv("IMAGENODES_LEASE_S", "6")
    monkeypatch.setenv("IMAGENODES_MAX_QUEUE", "8")
    settings = settings_from_args(
        parse("serve", "--config", str(config), "--lease-s", "7", "--port", "0")
    )
    assert settings.lease_s == 7  # flag
    assert settings.max_queue == 8  # environment over the config file
    assert settings.replicas == 3  # config file over the default
    assert settings.max_attempts == ServerSettings.default_of("max_attempts") == 3  # default
    assert settings.port == 0

    monkeypatch.delenv("IMAGENODES_LEASE_S")
    assert settings_from_args(parse("serve", "--config", str(config))).lease_s == 5
    assert settings_from_args(parse("serve")).lease_s == 30  # no config: the default
    # The config file may come from IMAGENODES_CONFIG too; --config wins over it.
    monkeypatch.setenv("IMAGENODES_CONFIG", str(write(tmp_path / "env.toml", "replicas = 4\n")))
    assert ServerSettings().replicas == 4
    assert settings_from_args(parse("worker", "--config", str(config))).replicas == 3


def test_flags_not_given_leave_the_defaults_to_the_settings_class() -> None:
    args = parse("serve")
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    assert given == {"workspace": None}  # the global --workspace; the rest are SUPPRESS
    settings = settings_from_args(args)
    assert settings == ServerSettings()
    assert (settings.host, settings.port, settings.max_wait_s) == ("127.0.0.1", 8188, 60.0)


def test_the_global_workspace_and_connections_flags_reach_the_settings(tmp_path: Path) -> None:
    conns = write(tmp_path / "c.toml", "")
    settings = settings_from_args(
        parse("--workspace", "memory://a", "--connections", str(conns), "worker")
    )
    assert (settings.workspace, settings.connections_file) == ("memory://a", str(conns))
    assert (
        settings_from_args(parse("--workspace", "a", "serve", "--workspace", "b")).workspace == "b"
    )


def test_the_workspace_may_come_from_the_environment_or_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "service.toml", f'workspace = "{tmp_path / "from-file"}"\n')
    settings = settings_from_args(parse("serve", "--config", str(config)))
    assert settings.workspace == str(tmp_path / "from-file")
    monkeypatch.setenv("IMAGENODES_WORKSPACE", str(tmp_path / "from-env"))
    settings = settings_from_args(parse("serve", "--config", str(config)))
    assert settings.workspace == str(tmp_path / "from-env")
    service = build_service(settings.model_copy(update={"workers": 1}))
    try:
        assert Path(service.host.workspace.root) == tmp_path / "from-env"
    finally:
        service.store.close()


def test_token_and_webhook_secret_come_through_the_settings_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGENODES_TOKEN", "s3cret-from-env")
    monkeypatch.setenv("IMAGENODES_WEBHOOK_SECRET", "hmac-from-env")
    settings = ServerSettings(host="0.0.0.0")
    assert settings.token == settings.resolved_token() == "s3cret-from-env"
    assert settings.resolved_webhook_secret() == "hmac-from-env"
    settings.check_bind()  # a token is set, so binding beyond loopback is allowed
    assert "s3cret" not in repr(settings) and "hmac" not in repr(settings)
    assert ServerSettings(token="flag").resolved_token() == "flag"  # a flag wins
    monkeypatch.setenv("IMAGENODES_TOKEN", "")  # empty = unset
    with pytest.raises(ValueError, match="token"):
        ServerSettings(host="0.0.0.0").check_bind()


def test_a_config_file_sets_workers_and_max_wait(tmp_path: Path) -> None:
    config = write(tmp_path / "service.toml", "workers = 3\nmax_wait_s = 120\n")
    settings = ServerSettings.load(config=config)
    assert (settings.workers, settings.max_wait_s, settings.workers_given) == (3, 120.0, True)
    assert settings.resolved_workers(Host(tmp_path / "ws")) == 3  # asked for: kept
    assert settings_from_args(parse("serve", "--max-wait-s", "300")).max_wait_s == 300


def test_list_settings_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGENODES_WEBHOOK_ALLOW", "hooks.example.com, ci.example.com:8443")
    monkeypatch.setenv("IMAGENODES_CORS_ORIGINS", '["https://builder.example.com"]')
    settings = ServerSettings()
    assert settings.webhook_allow == ("hooks.example.com", "ci.example.com:8443")
    assert settings.cors_origins == ("https://builder.example.com",)
    args = parse(
        "serve", "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"
    )
    assert settings_from_args(args).cors_origins == ("https://a.example", "https://b.example")


def test_settings_are_immutable_and_built_by_keyword(tmp_path: Path) -> None:
    settings = ServerSettings(workers=2, state_dir=tmp_path / "state")
    assert settings.workers == 2 and settings.state_dir == tmp_path / "state"
    with pytest.raises(ValidationError):
        settings.workers = 3  # type: ignore[misc]
    assert settings.model_copy(update={"workers": 5}).workers == 5


# -- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicas": 0}, "--replicas"),
        ({"replica_jobs": 0}, "--replica-jobs"),
        ({"workers": -1}, "--workers"),
        ({"lease_s": 0}, "--lease-s"),
        ({"max_wait_s": 0}, "--max-wait-s"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"batch_window_ms": -1}, "--batch-window-ms"),
        ({"on_restart": "never"}, "--on-restart"),
        ({"port": 70000}, "--port"),
    ],
)
def test_bad_values_are_coded_errors_naming_the_flag(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as caught:
        ServerSettings.load(**values)
    assert caught.value.code == "INVALID_INPUT" and caught.value.field == field
    assert caught.value.message.startswith(field)


def test_a_bad_environment_value_stops_serve_with_a_coded_error(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "serve", "--port", "0", env={"IMAGENODES_REPLICAS": "0"})
    error = error_of(proc)
    assert error["field"] == "--replicas" and "IMAGENODES_REPLICAS" in error["message"]


def test_a_bad_config_file_stops_serve_with_a_coded_error(tmp_path: Path) -> None:
    write(tmp_path / "bad.toml", 'workers = "many"\n')
    error = error_of(run_cli(tmp_path, "serve", "--config", "bad.toml"))
    assert error["field"] == "--workers" and "bad.toml" in error["message"]

    write(tmp_path / "typo.toml", "wokers = 2\n")
    error = error_of(run_cli(tmp_path, "worker", env={"IMAGENODES_CONFIG": "typo.toml"}))
    assert error["field"] == "--config" and "'wokers'" in error["message"]

    write(tmp_path / "broken.toml", "workers = [\n")
    error = error_of(run_cli(tmp_path, "serve", "--config", "broken.toml"))
    assert error["field"] == "--config" and "TOML" in error["message"]

    error = error_of(run_cli(tmp_path, "serve", "--config", "missing.toml"))
    assert error["field"] == "--config" and "missing.toml" in error["message"]


# -- workers -----------------------------------------------------------------------------------
def test_default_workers_follow_the_default_connections_per_call_limit(tmp_path: Path) -> None:
    assert EMBEDDED.max_images_per_call > 1
    settings = ServerSettings()
    assert not settings.workers_given
    assert settings.workers == EMBEDDED.max_images_per_call  # before a host is known
    host = Host(tmp_path / "ws")  # the default connection: the embedded model
    assert settings.resolved_workers(host) == EMBEDDED.max_images_per_call
    # The default connection's family decides, not the embedded one's.
    sd_host = Host(
        tmp_path / "ws2", connections={"default": {"type": "local_diffusers", "profile": "sd"}}
    )
    assert settings.resolved_workers(sd_host) == SD.max_images_per_call
    assert ServerSettings(workers=None).resolved_workers(sd_host) == SD.max_images_per_call
    assert ServerSettings(workers=2).resolved_workers(sd_host) == 2  # asked for: kept
    assert ServerSettings(workers=0).resolved_workers(host) == 0  # API only


def test_default_workers_on_ray_are_one_per_replica_slot(tmp_path: Path) -> None:
    settings = ServerSettings(executor="ray", replicas=3, replica_jobs=2)
    assert settings.workers == 6
    assert settings.resolved_workers(Host(tmp_path / "ws")) == 6


# -- the composition root ----------------------------------------------------------------------
def test_build_service_wires_host_store_webhooks_and_resolved_workers(tmp_path: Path) -> None:
    host = Host(tmp_path / "ws")
    service = build_service(ServerSettings(state_dir=tmp_path / "state"), host=host)
    try:
        assert service.host is host
        assert service.settings.workers == EMBEDDED.max_images_per_call  # what it runs
        assert service.store.on_event == service.published
        assert (tmp_path / "state" / "jobs.sqlite3").exists()
        assert (tmp_path / "state" / "webhook_secret").exists()
        assert service.webhooks is not None
    finally:
        service.store.close()


def test_build_service_opens_the_settings_workspace_and_default_state_dir(tmp_path: Path) -> None:
    service = build_service(ServerSettings(workspace=str(tmp_path / "ws"), workers=1))
    try:
        assert Path(service.host.workspace.root) == tmp_path / "ws"
        assert default_state_dir(service.host) == tmp_path / "ws" / ".server"
        assert (tmp_path / "ws" / ".server" / "jobs.sqlite3").exists()
        assert service.settings.workers == 1
    finally:
        service.store.close()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_both_build_their_service_with_build_service(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    from imagenodes.cli import main
    from imagenodes.server.store import SQLiteJobStore

    calls: list[dict[str, Any]] = []
    opened: list[SQLiteJobStore] = []

    def shared_store(settings: ServerSettings, host: Host) -> SQLiteJobStore:
        store = SQLiteJobStore(tmp_path / "q.sqlite3")
        store.shared = True  # stands in for PostgreSQL: both roles accept it
        opened.append(store)
        return store

    def recorder(settings: ServerSettings, **kwargs: Any) -> Any:
        calls.append({"settings": settings, **kwargs})
        raise InputError("stop here", field="probe")

    monkeypatch.setattr(compose, "open_service_store", shared_store)
    monkeypatch.setattr(compose, "build_service", recorder)
    argv = [command, "--queue", "postgresql://u@db/q", "--workspace", str(tmp_path / "ws")]
    assert main([*argv, "--max-attempts", "5"]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["field"] == "probe"
    (call,) = calls
    assert call["settings"].max_attempts == 5 and call["store"] is opened[0]
    assert Path(call["host"].workspace.root) == tmp_path / "ws"


def test_worker_still_refuses_a_queue_it_cannot_share(tmp_path: Path) -> None:
    queue = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    error = error_of(run_cli(tmp_path, "worker", "--queue", queue, "--workspace", "ws"))
    assert error["field"] == "--queue" and "share" in error["message"]


def test_serve_help_shows_the_defaults_of_the_settings_class(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imagenodes.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-wait-s" in text and "(default: 60.0)" in text and "(default: 8188)" in text
    assert "--config" in text
