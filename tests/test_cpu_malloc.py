"""The engine's CPU allocator settings: applied once, and never over the user's choice.

Each case runs in a fresh interpreter: the settings are process-wide (glibc's
``mallopt``, torch's ``THP_MEM_ALLOC_ENABLE`` read at its first allocation).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, os
import imagenodes.engine  # sets THP_MEM_ALLOC_ENABLE before torch is imported
from imagenodes.engine.device import tune_cpu_malloc
state = tune_cpu_malloc()
print(json.dumps({"state": state, "again": tune_cpu_malloc(),
                  "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def probe(**env: str) -> dict[str, str | None]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MALLOC_", "IMAGENODES_CPU", "THP_MEM", "GLIBC_TUNABLES"))
    }
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@glibc
def test_cpu_work_gets_a_fixed_mmap_threshold_and_huge_pages() -> None:
    assert probe() == {"state": "tuned", "again": "tuned", "thp": "1"}


def test_imagenodes_cpu_malloc_default_leaves_the_allocators_alone() -> None:
    assert probe(IMAGENODES_CPU_MALLOC="default") == {
        "state": "default",
        "again": "default",
        "thp": None,
    }


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"THP_MEM_ALLOC_ENABLE": "0", "MALLOC_TRIM_THRESHOLD_": "0"},
    ],
)
def test_the_users_own_malloc_settings_win(env: dict[str, str]) -> None:
    out = probe(**env)
    assert out["state"] == "user"
    assert out["thp"] == env.get("THP_MEM_ALLOC_ENABLE", "1")


@pytest.mark.parametrize("value", ["off", "0", "jemalloc"])
def test_a_bad_imagenodes_cpu_malloc_is_a_connection_error_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from imagenodes import Host, ImageNodesError

    monkeypatch.setenv("IMAGENODES_CPU_MALLOC", value)
    with pytest.raises(ImageNodesError) as info:
        Host(tmp_path / "ws")
    assert info.value.code == "CONNECTION_ERROR"
    assert info.value.field == "IMAGENODES_CPU_MALLOC"
    assert "tuned, default" in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["tuned", "Default", ""])
def test_the_documented_imagenodes_cpu_malloc_values_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from imagenodes import Host

    monkeypatch.setenv("IMAGENODES_CPU_MALLOC", value)
    assert Host(tmp_path / "ws").workspace is not None
