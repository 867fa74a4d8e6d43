"""The ``imagenodes`` command as a user runs it: a real subprocess, real exit codes,
result JSON on stdout, errors as JSON on stderr, a progress bar while denoising."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagenodes import Host
from imagenodes.cli import ProgressDisplay
from imagenodes.registry.events import Event, make_event
from tests.helpers import NODE_IDS

TOKEN = "hf_CliSecret_9876543210zyx"


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def child_env() -> dict[str, str]:
    """The test's environment (isolated by the root conftest: no ``IMAGENODES_*``, a
    private user config dir), offline and on one thread."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m imagenodes.cli ARGS`` in a scratch folder."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "imagenodes.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=child_env(),
            timeout=600,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def error_of(proc: subprocess.CompletedProcess[str], exit_code: int) -> dict[str, Any]:
    """The JSON error on the last line of stderr; stdout stays empty."""
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    err = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert set(err) - {"details"} == {"code", "field", "message", "solution"}
    return err


def ref_path(ref: str, ws: Path) -> Path:
    assert ref.startswith("file://"), ref
    path = Path(ref.removeprefix("file://"))
    assert path.is_relative_to(ws.resolve()) or path.is_relative_to(ws), (path, ws)
    return path


def png_data_uri(size: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (30, 30, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def connections_toml(path: Path, **fields: Any) -> Path:
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    path.write_text(f"[connections.default]\n{body}\n")
    return path


# -- catalog commands ------------------------------------------------------------------
def test_nodes_lists_builtins_and_the_example_pack(cli, ws: Path) -> None:
    proc = cli("--workspace", str(ws), "nodes")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "VERSION", "CATEGORY", "AVAILABLE"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert set(rows) == NODE_IDS, proc.stdout
    assert len(lines) == 1 + len(NODE_IDS)  # one row per node
    assert {node: row[3] for node, row in rows.items()} == dict.fromkeys(NODE_IDS, "yes")
    assert rows["generate_image_v2"][1] == "2.0.0"
    assert "Generate Image V2" in proc.stdout and "Checkerboard" in proc.stdout


def test_schema_prints_the_catalog_entry(cli, ws: Path) -> None:
    proc = cli("--workspace", str(ws), "schema", "generate_image_v2")
    assert proc.returncode == 0, proc.stderr
    entry = next(e for e in Host(ws).catalog() if e["id"] == "generate_image_v2")
    assert json.loads(proc.stdout) == entry
    assert files_in(ws) == []

    err = error_of(cli("--workspace", str(ws), "schema", "generate_image_v3"), 2)
    assert err["code"] == "UNKNOWN_NODE" and err["field"] == "node"


def test_a_packs_command_runs_through_imagenodes(ws: Path, tmp_path: Path) -> None:
    """The example pack adds ``imagenodes checkerboard`` through register_commands; the
    installed ``imagenodes`` script runs it with the global flags, as it runs ``flow``."""
    script = Path(sys.executable).with_name("imagenodes")
    proc = subprocess.run(
        [str(script), "--workspace", str(ws), "checkerboard", "--size", "16", "--squares", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert result["node"] == "checkerboard"
    with Image.open(io.BytesIO(Host(ws).workspace.read_bytes(result["outputs"]["image"]))) as im:
        assert im.size == (16, 16)
    help_text = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=child_env(), timeout=300
    ).stdout
    commands = set(re.search(r"\{([\w,-]+)\}", help_text).group(1).split(","))
    assert {"checkerboard", "flow", "trainings", "mcp", "serve"} <= commands, help_text
    # Its errors are the command's coded JSON, exit 2.
    err = subprocess.run(
        [str(script), "--workspace", str(ws), "checkerboard", "--size", "2"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert err.returncode == 2, err.stderr
    assert json.loads(err.stderr.strip().splitlines()[-1])["error"]["field"] == "size"


# -- running ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["json", "file", "stdin", "set", "json+set"])
def test_run_checkerboard_inputs(cli, ws: Path, tmp_path: Path, how: str) -> None:
    inputs = {"size": 32, "squares": 4, "colour": "red"}
    args = ["--workspace", str(ws), "run", "checkerboard"]
    stdin = None
    if how == "json":
        args += ["--input", json.dumps(inputs)]
    elif how == "file":
        path = tmp_path / "inputs.json"
        path.write_text(json.dumps(inputs))
        args += ["--input", f"@{path}"]
    elif how == "stdin":
        args += ["--input", "-"]
        stdin = json.dumps(inputs)
    elif how == "set":
        args += ["--set", "size=32", "--set", "squares=4", "--set", "colour=red"]
    else:  # --set overrides what --input gave
        args += ["--input", json.dumps({**inputs, "size": 128}), "--set", "size=32"]
    result = result_of(cli(*args, stdin=stdin))
    assert result["node"] == "checkerboard"
    image = ref_path(result["outputs"]["image"], ws)
    with Image.open(image) as im:
        assert im.size == (32, 32)
        assert im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)  # red, parsed as a string
    assert ref_path(result["run_json"], ws).is_file()
    assert json.loads(ref_path(result["run_json"], ws).read_text())["inputs"]["size"] == 32
    assert {p.name for p in files_in(ws)} == {"image-0.png", "run.json"}


def test_run_real_generation_shows_a_progress_bar(
    cli, ws: Path, tmp_path: Path, tiny_sd: Path
) -> None:
    """image_to_image on a tiny real SD model configured through --connections."""
    conns = connections_toml(tmp_path / "conn.toml", model=str(tiny_sd), device="cpu")
    proc = cli(
        "--workspace",
        str(ws),
        "--connections",
        str(conns),
        "run",
        "image_to_image",
        "--input",
        json.dumps({"prompt": "a red circle", "negative_prompt": "blurry"}),
        "--set",
        f"source_image={png_data_uri()}",
        "--set",
        "width=64",
        "--set",
        "height=64",
        "--set",
        "steps=2",
        "--set",
        "strength=1.0",  # all 2 steps run (img2img skips the first 1 - strength of them)
        "--set",
        "seed=5",
        "--progress",  # stderr is a pipe here: without the flag it stays silent
    )
    result = result_of(proc)
    assert "2/2" in proc.stderr, proc.stderr
    assert "1/2" in proc.stderr  # it advanced step by step
    assert result["seeds"] == [5] and result["pipeline_calls"] == 1
    (ref,) = result["outputs"]["images"]
    with Image.open(ref_path(ref, ws)) as im:
        assert im.size == (64, 64)
    assert len(files_in(ws)) == 2


EMBEDDED_SMALL = json.dumps(
    {"prompt": "a red circle", "negative_prompt": "", "aspect_ratio": "1:1", "steps": 2, "seed": 3}
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TORCHVISION_ADVISORY = "requires torchvision"


def run_on_a_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in a shell), stdout on a pipe.

    Returns the exit code, stdout, and everything written to the terminal (escape
    sequences and all).
    """
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    env = {**child_env(), "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagenodes.cli", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    terminal = b"".join(chunks).decode(errors="replace")
    assert "Traceback" not in terminal, terminal
    return code, out, terminal


@pytest.mark.slow  # generates on the embedded model
def test_run_on_a_terminal_draws_step_bars_and_clears_them(ws: Path, tmp_path: Path) -> None:
    code, out, terminal = run_on_a_terminal(
        "--workspace", str(ws), "run", "generate_image_v2", "--input", EMBEDDED_SMALL, cwd=tmp_path
    )
    assert code == 0, terminal
    assert json.loads(out)["seeds"] == [3]
    text = ANSI.sub("", terminal)
    assert "loading imagenodes/embedded-shapes" in text, terminal
    assert "generate_image_v2 image 1" in text, terminal
    assert "step 1/2" in text and "step 2/2" in text, terminal
    assert re.search(r"step 2/2 \d+\.\ds eta \d+\.\ds", text), terminal
    # Transient: the last frame is erased again (carriage return + erase line).
    assert "\x1b[2K" in terminal[terminal.rindex("2/2") :], terminal
    assert TORCHVISION_ADVISORY not in terminal


@pytest.mark.slow  # generates on the embedded model, twice
def test_run_on_a_pipe_prints_no_progress_and_no_known_advisories(cli, ws: Path) -> None:
    """Not a terminal and no --progress: stderr stays free of progress output; the
    transformers torchvision advisories are hidden unless -v asks for them."""
    proc = cli("--workspace", str(ws), "run", "generate_image_v2", "--input", EMBEDDED_SMALL)
    assert result_of(proc)["seeds"] == [3]
    for progress_text in ("step", "1/2", "2/2", "loading", "\r", "\x1b"):
        assert progress_text not in proc.stderr, proc.stderr
    assert TORCHVISION_ADVISORY not in proc.stderr, proc.stderr

    verbose = cli(
        "-v", "--workspace", str(ws), "run", "generate_image_v2", "--input", EMBEDDED_SMALL
    )
    assert result_of(verbose)["seeds"] == [3]
    assert "step 1/2" not in ANSI.sub("", verbose.stderr)  # -v is not --progress
    if importlib.util.find_spec("torchvision") is None:  # transformers only warns without it
        assert "[transformers]" in verbose.stderr, verbose.stderr
        assert f"`CLIPImageProcessor` {TORCHVISION_ADVISORY}" in verbose.stderr
    assert "[diffusers] info:" in verbose.stderr, verbose.stderr  # -v shows INFO logs too


def test_progress_and_quiet_are_exclusive(cli, ws: Path) -> None:
    proc = cli("--workspace", str(ws), "run", "checkerboard", "--progress", "--quiet")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not allowed with" in proc.stderr
    assert files_in(ws) == []


def step(run_id: str, batch_index: int, n: int, total: int = 4) -> Event:
    data = {
        "batch_index": batch_index,
        "batch_size": 2,
        "step": n,
        "total": total,
        "elapsed_s": 0.5 * n,
        "eta_s": 0.5 * (total - n),
    }
    return make_event("node.progress", run_id=run_id, node="generate_image_v2", **data)


def test_progress_display_keeps_one_bar_per_batch_from_worker_threads() -> None:
    """Events of two concurrent runs (two batches each) arrive from worker threads."""
    stream = io.StringIO()
    with ProgressDisplay(stream, force=True) as display:

        def worker(run_id: str) -> None:
            for n in range(1, 5):
                for batch_index in (0, 2):
                    display(step(run_id, batch_index, n))

        threads = [threading.Thread(target=worker, args=(r,)) for r in ("run-a", "run-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tasks = display.progress.tasks
        assert len(tasks) == 4
        assert all(t.completed == t.total == 4 for t in tasks)
        assert {t.description for t in tasks} == {
            "generate_image_v2 images 1-2",
            "generate_image_v2 images 3-4",
        }
        display(make_event("run.finished", run_id="run-a", node="generate_image_v2"))
        assert len(display.progress.tasks) == 2  # only run-a's bars are gone
        display(make_event("run.cancelled", run_id="run-b", node="generate_image_v2", error={}))
        assert display.progress.tasks == []
    display(step("run-c", 0, 1))  # a late event after the command ended is ignored
    assert display.progress.tasks == []
    text = ANSI.sub("", stream.getvalue())
    assert "step 4/4" in text and "images 3-4" in text


def test_progress_display_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with ProgressDisplay(stream) as display:
        display(
            make_event(
                "model.loading", run_id="r", node="generate_image_v2", model="m", profile="sd"
            )
        )
        display(step("r", 0, 1))
        display(make_event("run.finished", run_id="r", node="generate_image_v2"))
    assert stream.getvalue() == ""


def test_connections_command_masks_secrets(cli, ws: Path, tmp_path: Path) -> None:
    conns = connections_toml(tmp_path / "conn.toml", model="/models/x", hub_token=TOKEN)
    proc = cli("--workspace", str(ws), "--connections", str(conns), "connections")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["default"]["hub_token"] == "**********"
    assert shown["default"]["model"] == "/models/x"
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr


# -- failures --------------------------------------------------------------------------
V2 = {"prompt": "a red circle", "negative_prompt": ""}
USER_ERRORS = [
    (["--set", "prompt=", "--set", "negative_prompt="], "EMPTY_PROMPT", "prompt"),
    (["--input", json.dumps({**V2, "prompt": "   "})], "EMPTY_PROMPT", "prompt"),
    (["--input", json.dumps({**V2, "steps": 51})], "INVALID_STEPS", "steps"),
    (["--input", json.dumps(V2), "--set", "colour=red"], "INVALID_INPUT", "colour"),
    (["--input", json.dumps({"prompt": "a"})], "INVALID_INPUT", "negative_prompt"),
    (["--input", '{"prompt": "a", '], "INVALID_INPUT", "--input"),
    (["--input", "[1, 2]"], "INVALID_INPUT", "--input"),
    (["--input", "@does-not-exist.json"], "INVALID_INPUT", "--input"),
    (["--input", json.dumps(V2), "--set", "steps"], "INVALID_INPUT", "--set"),
]


@pytest.mark.parametrize(
    "args,code,field", USER_ERRORS, ids=[f"{c}-{f}-{i}" for i, (_, c, f) in enumerate(USER_ERRORS)]
)
def test_input_errors_exit_2_with_json_on_stderr(
    cli, ws: Path, args: list[str], code: str, field: str
) -> None:
    err = error_of(cli("--workspace", str(ws), "run", "generate_image_v2", *args), 2)
    assert (err["code"], err["field"]) == (code, field), err
    assert err["message"] and err["solution"]
    assert files_in(ws) == []


@pytest.mark.slow  # the runs reach the engine, so the child imports torch
def test_bad_connection_exits_2(cli, ws: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    conns = connections_toml(tmp_path / "conn.toml", model=str(missing), hub_token=TOKEN)
    args = ["--workspace", str(ws), "--connections", str(conns)]
    proc = cli(*args, "run", "generate_image_v2", "--input", json.dumps(V2))
    err = error_of(proc, 2)
    assert (err["code"], err["field"]) == ("CONNECTION_ERROR", "model")
    assert str(missing) in err["message"]
    assert TOKEN not in proc.stderr
    assert files_in(ws) == []

    conns.write_text('[connections.default]\ndevice = "tpu"\n')
    err = error_of(cli(*args, "run", "generate_image_v2", "--input", json.dumps(V2)), 2)
    assert (err["code"], err["field"]) == ("CONNECTION_ERROR", "device")
    assert "'default'" in err["message"]

    missing_file = tmp_path / "nowhere.toml"
    err = error_of(
        cli("--workspace", str(ws), "--connections", str(missing_file), "run", "checkerboard"), 2
    )
    assert (err["code"], err["field"]) == ("CONNECTION_ERROR", "connections_file")
    assert files_in(ws) == []


def test_generation_failed_exits_1(
    cli, ws: Path, tmp_path: Path, tiny_models: Callable[[str], Path]
) -> None:
    """A real InstructPix2Pix model cannot do text-to-image: GENERATION_FAILED."""
    conns = connections_toml(tmp_path / "conn.toml", model=str(tiny_models("instruct-pix2pix")))
    proc = cli(
        "--workspace",
        str(ws),
        "--connections",
        str(conns),
        "run",
        "generate_image_v2",
        "--input",
        json.dumps({**V2, "steps": 2}),
    )
    err = error_of(proc, 1)
    assert (err["code"], err["field"]) == ("GENERATION_FAILED", "model")
    assert "text-to-image" in err["message"]
    assert files_in(ws) == []


def test_timeout_exits_1(cli, ws: Path, tmp_path: Path, tiny_sd: Path) -> None:
    conns = connections_toml(tmp_path / "conn.toml", model=str(tiny_sd))
    proc = cli(
        "--workspace",
        str(ws),
        "--connections",
        str(conns),
        "run",
        "generate_image_v2",
        "--input",
        json.dumps({**V2, "steps": 50, "batch_size": 8, "aspect_ratio": "1:1"}),
        "--timeout",
        "0.05",
    )
    err = error_of(proc, 1)
    assert (err["code"], err["field"]) == ("GENERATION_TIMEOUT", "timeout")
    assert files_in(ws) == []
