"""Test helpers for imagenodes and for plugin authors.

Everything here runs offline: the tiny models in :mod:`imagenodes.testing.tiny_models` are
built from small configs with random weights and locally made tokenizers, so a test suite
(ours or a plugin's) can exercise the real diffusers code paths of every supported family
without a model hub, a GPU or gigabytes of weights.

Importing this package is cheap: the pytest plugin (``imagenodes.testing.pytest_plugin``,
loaded by every pytest run through the ``pytest11`` entry point) imports it, so torch,
diffusers and transformers are imported only when a tiny-model helper is first used
(``from imagenodes.testing import build_tiny_model`` does that, on purpose).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from imagenodes.testing.tiny_models import (
        FAMILIES,
        TINY_IMAGE_SIZE,
        build_sd15_architecture,
        build_sd15_pipeline,
        build_tiny_model,
        build_tiny_pipeline,
    )

_ENV_PREFIX = "IMAGENODES_"  # every environment variable imagenodes reads

_TINY_MODEL_NAMES = frozenset(
    {
        "FAMILIES",
        "TINY_IMAGE_SIZE",
        "build_sd15_architecture",
        "build_sd15_pipeline",
        "build_tiny_model",
        "build_tiny_pipeline",
    }
)


def isolate_environment(
    monkeypatch: pytest.MonkeyPatch, config_dir: str | os.PathLike[str]
) -> Path:
    """Keep a test away from the caller's imagenodes configuration.

    Removes every ``IMAGENODES_*`` environment variable and points the user config
    directory (where ``connections.toml`` is looked for) at ``config_dir``: through
    ``XDG_CONFIG_HOME``, which subprocesses inherit, and by patching
    :func:`imagenodes.connections.store.default_config_file`, for platforms where
    platformdirs ignores that variable.  Everything is undone with ``monkeypatch``.
    Returns ``config_dir`` (not created).
    """
    from imagenodes.connections import store

    config = Path(config_dir)
    for key in list(os.environ):
        if key.startswith(_ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    config_file = config / "imagenodes" / "connections.toml"
    monkeypatch.setattr(store, "default_config_file", lambda: config_file)
    return config


def __getattr__(name: str) -> Any:
    # PEP 562: the tiny-model helpers import torch and diffusers, so only on first use.
    if name in _TINY_MODEL_NAMES:
        value = getattr(importlib.import_module("imagenodes.testing.tiny_models"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TINY_MODEL_NAMES})


__all__ = [
    "FAMILIES",
    "TINY_IMAGE_SIZE",
    "build_sd15_architecture",
    "build_sd15_pipeline",
    "build_tiny_model",
    "build_tiny_pipeline",
    "isolate_environment",
]
