"""Shared fixtures: environment isolation, one host factory, tiny real models.

Nothing here fakes generation: the tiny models are real diffusers pipelines with
random weights (built by :mod:`imagenodes.testing.tiny_models`), and the embedded
model is the shipped one.

Two tiers:

* ``pytest -m "not slow"``: everything that neither generates nor imports torch
  (catalog, validation, errors, connections, workspace, flows resolution, CLI
  commands that generate nothing).  It runs in seconds, and it fails if torch got
  imported anyway (see ``pytest_sessionfinish``), naming the first test that did.
* ``pytest``: everything, slow included (generation on the tiny models and the
  embedded one, pipeline loading, the MCP server end to end): a few minutes on CPU.

A test is slow when it is marked ``@pytest.mark.slow`` (or its module has
``pytestmark = pytest.mark.slow``), or when it uses one of :data:`SLOW_FIXTURES`,
directly or through another fixture: those are marked here at collection.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagenodes import Host, hookimpl
from imagenodes.engine.profiles import SD, ModelProfile
from imagenodes.testing import isolate_environment

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SD_PROFILE = ModelProfile(
    name="tiny-sd",
    title="Tiny SD (tests)",
    pipelines=SD.pipelines,
    id_patterns=("*/tiny-sd", "*/tiny-sd-copy"),
    native_resolution=64,
    max_resolution=128,
    max_images_per_call=4,
    priority=50,
)


class TinyProfiles:
    """A test plugin: registers a 64-px profile for the tiny SD model, through the
    same hook a third-party family pack would use."""

    @hookimpl
    def register_model_profiles(self, register: Callable[[Any], None]) -> None:
        register(TINY_SD_PROFILE)


# -- tiers ---------------------------------------------------------------------------------
#: Fixtures that build or load real models; a test that uses one is slow.
SLOW_FIXTURES = frozenset(
    {"tiny_models", "tiny_sd", "tiny_host", "embedded_host_session", "imagenodes_tiny_model"}
)
FAST_TIER = "not slow"
#: The first test during which torch got imported ("collection" if before any test).
_torch_imported_by: list[str] = []


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    if "torch" in sys.modules and not _torch_imported_by:
        _torch_imported_by.append("collection (a module imports torch when it is imported)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    before = "torch" in sys.modules
    try:
        return (yield)
    finally:
        if not before and "torch" in sys.modules:
            _torch_imported_by.append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the ``-m "not slow"`` tier when torch was imported during it."""
    markexpr = " ".join(str(session.config.getoption("markexpr") or "").split())
    if markexpr != FAST_TIER or "torch" not in sys.modules:
        return
    culprit = _torch_imported_by[0] if _torch_imported_by else "before the session"
    message = (
        f'torch was imported in the torch-free tier (-m "{FAST_TIER}"), first by {culprit}: '
        "mark that test slow or keep torch out of it"
    )
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "torch imported in the fast tier", red=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- isolation -----------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same isolation as :func:`user_config_dir`, for session and module fixtures
    (which are set up before any function-scoped fixture)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("user-config"))
        yield


@pytest.fixture(autouse=True)
def user_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test: no ``IMAGENODES_*`` variable of the caller's, and a private, empty
    user config directory (``XDG_CONFIG_HOME``, inherited by subprocesses)."""
    return isolate_environment(monkeypatch, tmp_path / "user-config")


# -- models and hosts ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Lazily build each family once per session: ``tiny_models("sdxl")``."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from imagenodes.testing.tiny_models import build_tiny_model

            name = "tiny-sd" if family == "sd" else f"tiny-{family}"
            built[family] = build_tiny_model(family, root / name)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: Callable[[str], Path]) -> Path:
    return tiny_models("sd")


@pytest.fixture(scope="session")
def make_host(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Host]:
    """The host factory: ``make_host(model=None, *, workspace=None, tiny_profile=False,
    plugins=(), **host_kwargs)``.

    ``model`` (a folder such as ``tiny_sd``, or a hub id) becomes the default
    connection's model; without it the host uses the embedded model.  ``tiny_profile``
    adds :class:`TinyProfiles` (64 px native, 128 px max, 4 images per call) before
    ``plugins``.  The workspace is a fresh temporary folder unless given.  Other
    keywords (``connections``, ``load_entrypoints``, ...) go to :class:`Host`.
    Session-scoped so that module-scoped host fixtures can use it.
    """

    def make(
        model: str | os.PathLike[str] | None = None,
        *,
        workspace: str | os.PathLike[str] | None = None,
        tiny_profile: bool = False,
        plugins: Iterable[Any] = (),
        connections: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Host:
        connections = dict(connections or {})
        if model is not None:
            connections["default"] = {**connections.get("default", {}), "model": str(model)}
        return Host(
            tmp_path_factory.mktemp("ws") if workspace is None else workspace,
            connections=connections or None,
            plugins=[*([TinyProfiles()] if tiny_profile else []), *plugins],
            **kwargs,
        )

    return make


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def tiny_host(make_host: Callable[..., Host], tiny_sd: Path, workspace_dir: Path) -> Host:
    """A host over a local-folder workspace whose default model is the tiny SD."""
    return make_host(tiny_sd, workspace=workspace_dir, tiny_profile=True)


@pytest.fixture(scope="session")
def embedded_host_session(make_host: Callable[..., Host]) -> Host:
    """One host on the embedded model for the whole session (its pipeline stays warm)."""
    return make_host()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
