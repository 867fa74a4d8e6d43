"""Workspace storage on a real local directory and on memory://."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from imagenodes.errors import InputError, SourceImageError
from imagenodes.workspace import (
    METADATA_KEY,
    Workspace,
    encode_png,
    read_imagenodes_metadata,
    read_png_metadata,
)
from imagenodes.workspace import store as store_mod
from imagenodes.workspace.store import TEMP_PREFIX


@pytest.fixture(params=["local", "memory"])
def ws(request, tmp_path):
    if request.param == "local":
        yield Workspace(tmp_path / "ws")
        return
    name = f"ws-{uuid.uuid4().hex}"
    workspace = Workspace(f"memory://{name}")
    yield workspace
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def _fail_on_nth_write(monkeypatch, ws: Workspace, n: int) -> list[str]:
    """Make the n-th low-level write of ``ws`` fail; return the list of attempts."""
    attempts: list[str] = []
    if ws.is_local:
        real = store_mod._atomic_local_write

        def flaky_local(full: str, payload: bytes) -> None:
            attempts.append(full)
            if len(attempts) == n:
                raise OSError(28, "No space left on device (simulated)")
            real(full, payload)

        monkeypatch.setattr(store_mod, "_atomic_local_write", flaky_local)
    else:
        real_pipe = ws.fs.pipe_file

        def flaky_pipe(path: str, value: bytes, **kwargs) -> None:
            attempts.append(path)
            if len(attempts) == n:
                raise OSError("simulated storage failure")
            real_pipe(path, value, **kwargs)

        monkeypatch.setattr(ws.fs, "pipe_file", flaky_pipe)
    return attempts


def _all_files(ws: Workspace, rel: str = "") -> list[str]:
    out: list[str] = []
    for entry in ws.ls(rel):
        children = ws.ls(entry)
        if children or (ws.is_local and os.path.isdir(ws._full(entry))):
            out.append(entry + "/")
            out.extend(_all_files(ws, entry))
        else:
            out.append(entry)
    return out


# -- construction -----------------------------------------------------------------


def test_local_url_is_absolute_file_uri(tmp_path):
    ws = Workspace(str(tmp_path / "a" / "..trailing" / ""))
    assert ws.url == "file://" + str(tmp_path / "a" / "..trailing")
    assert ws.root == str(tmp_path / "a" / "..trailing")
    assert Workspace(f"file://{tmp_path}/x/").url == f"file://{tmp_path}/x"


def test_default_from_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENODES_WORKSPACE", str(tmp_path / "fromenv"))
    assert Workspace().root == str(tmp_path / "fromenv")
    monkeypatch.delenv("IMAGENODES_WORKSPACE")
    monkeypatch.chdir(tmp_path)
    assert Workspace().url == f"file://{tmp_path}/workspace"


def test_memory_url_normalised():
    assert Workspace("memory://norm/").url == "memory://norm"
    assert Workspace("memory:///norm").url == "memory://norm"


@pytest.mark.parametrize("url", ["", "memory://", "simplecache::memory://x", "nosuchproto://x"])
def test_bad_workspace_urls(url):
    with pytest.raises(InputError) as err:
        Workspace(url)
    assert err.value.field == "workspace"


# -- references -------------------------------------------------------------------


def test_refs_round_trip(ws):
    ref = ws.write_bytes("runs/r1/image-0.png", b"abc")
    assert ref == f"{ws.url}/runs/r1/image-0.png"
    assert ws.ref("runs/r1/image-0.png") == ref
    assert ws.ref("./runs//r1/image-0.png") == ref
    assert ws.relpath(ref) == "runs/r1/image-0.png"
    assert ws.read_bytes(ref) == b"abc"
    assert ws.read_bytes("runs/r1/image-0.png") == b"abc"
    assert ws.exists(ref) and ws.exists("runs/r1")
    assert not ws.exists("runs/r2")
    assert ws.ls("runs/r1") == ["runs/r1/image-0.png"]
    assert ws.ls("") == ["runs"]
    assert ws.ls("nope") == []
    assert ws.relpath(ws.url) == ""


def test_local_absolute_and_file_uri_forms(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write_bytes("a/b.bin", b"1")
    abs_path = str(tmp_path / "ws" / "a" / "b.bin")
    assert ws.relpath(abs_path) == "a/b.bin"
    assert ws.relpath(Path(abs_path)) == "a/b.bin"
    assert ws.relpath(f"file://localhost{abs_path}") == "a/b.bin"
    assert ws.relpath(f"file:{abs_path}") == "a/b.bin"
    assert ws.relpath(f"local://{abs_path}") == "a/b.bin"
    assert ws.read_bytes(abs_path) == b"1"
    assert fsspec.open(ws.ref("a/b.bin"), "rb").open().read() == b"1"


ESCAPES = [
    "../x.png",
    "a/../../x.png",
    "a/../b.png",  # stays inside, but '..' is refused outright
    "/etc/passwd",
    "file:///etc/passwd",
    "file://otherhost/etc/passwd",
    "s3://bucket/x.png",
    "memory://someone-else/x.png",
    "ftp://example.com/x.png",
    "",
    "   ",
    "a\x00b",
]


@pytest.mark.parametrize("bad", ESCAPES)
def test_relpath_refuses_escapes(ws, bad):
    with pytest.raises(SourceImageError) as err:
        ws.relpath(bad, field="init_image")
    assert err.value.field == "init_image"
    assert err.value.code == "SOURCE_IMAGE_ERROR"
    assert "allowed" in err.value.message or "NUL" in err.value.message


def test_relpath_refuses_sibling_with_common_prefix(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "ws-evil" / "x").write_bytes(b"secret")
    for bad in (str(tmp_path / "ws-evil" / "x"), f"file://{tmp_path}/ws-evil/x"):
        with pytest.raises(SourceImageError):
            ws.read_bytes(bad)
    mem = Workspace("memory://pfx")
    with pytest.raises(SourceImageError):
        mem.relpath("memory://pfx-other/x")


def test_symlink_out_of_workspace_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    os.makedirs(ws.root)
    os.symlink(tmp_path / "outside.txt", Path(ws.root) / "link.txt")
    with pytest.raises(SourceImageError) as err:
        ws.read_bytes("link.txt", field="source_image")
    assert "symlink" in err.value.message
    with pytest.raises(SourceImageError):
        ws.write_bytes("link.txt", b"overwrite")
    assert (tmp_path / "outside.txt").read_bytes() == b"secret"


def test_missing_file_and_directory_errors(ws):
    with pytest.raises(SourceImageError) as err:
        ws.read_bytes("runs/none.png", field="source_image")
    assert err.value.field == "source_image"
    assert "does not exist" in err.value.message
    ws.write_bytes("d/f", b"x")
    with pytest.raises(SourceImageError):
        ws.read_bytes("d")
    with pytest.raises(SourceImageError) as err:
        ws.read_bytes("d/f", max_bytes=0)
    assert "maximum is 0 bytes" in err.value.message


# -- writing ----------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_files(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write_bytes("runs/r/a.bin", b"first")
    ws.write_bytes("runs/r/a.bin", b"second")
    assert sorted(os.listdir(tmp_path / "ws" / "runs" / "r")) == ["a.bin"]
    assert (tmp_path / "ws" / "runs" / "r" / "a.bin").read_bytes() == b"second"
    mode = os.stat(tmp_path / "ws" / "runs" / "r" / "a.bin").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_failed_local_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    ws.write_bytes("a.bin", b"old")

    def broken_replace(src, dst):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(store_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        ws.write_bytes("a.bin", b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "ws") == ["a.bin"]
    assert ws.read_bytes("a.bin") == b"old"


def test_remote_write_is_single_pipe_of_full_bytes(monkeypatch):
    ws = Workspace(f"memory://pipe-{uuid.uuid4().hex}")
    calls: list[tuple[str, bytes]] = []
    real = ws.fs.pipe_file

    def spy(path: str, value: bytes, **kwargs) -> None:
        calls.append((path, value))
        real(path, value, **kwargs)

    monkeypatch.setattr(ws.fs, "pipe_file", spy)
    ws.write_bytes("x/y.bin", b"payload")
    assert calls == [(f"{ws.root}/x/y.bin", b"payload")]


def test_ls_hides_in_flight_temp_files(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write_bytes("r/a.png", b"x")
    (tmp_path / "ws" / "r" / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
    assert ws.ls("r") == ["r/a.png"]


def test_json_and_remove(ws):
    ref = ws.write_json("runs/r/run.json", {"status": "ok", "prompt": "ünï"})
    assert ws.read_json(ref) == {"status": "ok", "prompt": "ünï"}
    ws.write_bytes("runs/r/bad.json", b"{nope")
    with pytest.raises(SourceImageError):
        ws.read_json("runs/r/bad.json")
    ws.remove("runs/r/bad.json")
    ws.remove("runs/r/bad.json")  # absent is fine
    assert ws.ls("runs/r") == ["runs/r/run.json"]
    ws.remove("runs", recursive=True)
    assert ws.ls("") == []
    with pytest.raises(InputError):
        ws.remove("", recursive=True)
    with pytest.raises(SourceImageError):
        ws.remove("../x")


# -- staging ----------------------------------------------------------------------


def test_staging_commit_writes_everything_in_order(ws, monkeypatch):
    order: list[str] = []
    real = ws.write_bytes

    def spy(rel: str, data: bytes, **kwargs) -> str:
        order.append(rel)
        return real(rel, data, **kwargs)

    monkeypatch.setattr(ws, "write_bytes", spy)
    st = ws.stage("runs/r1")
    run_ref = st.add("run.json", b"{}", kind="manifest")
    img0 = st.add("image-0.png", b"png0")
    params = st.add("params.json", b"[]", kind="data")
    img1 = st.add("image-1.png", b"png1")
    assert img0 == f"{ws.url}/runs/r1/image-0.png"
    assert not ws.exists("runs/r1")  # nothing touches storage before commit
    refs = st.commit()
    assert refs == [img0, img1, params, run_ref]
    assert order == [
        "runs/r1/image-0.png",
        "runs/r1/image-1.png",
        "runs/r1/params.json",
        "runs/r1/run.json",
    ]
    assert ws.read_bytes(img1) == b"png1"
    assert st.state == "committed"
    with pytest.raises(InputError):
        st.add("late.png", b"x")
    with pytest.raises(InputError):
        st.commit()


def test_staging_discard_writes_nothing(ws):
    st = ws.stage("runs/r2")
    st.add("image-0.png", b"x")
    st.discard()
    assert ws.ls("") == []
    with pytest.raises(InputError):
        st.commit()


def test_staging_context_manager_discards(ws):
    with pytest.raises(RuntimeError), ws.stage("runs/r3") as st:
        st.add("image-0.png", b"x")
        raise RuntimeError("generation failed")
    assert st.state == "discarded"
    with ws.stage("runs/r4") as st2:
        st2.add("image-0.png", b"x")  # cancelled run returns early: no commit
    assert ws.ls("") == []
    with ws.stage("runs/r5") as st3:
        st3.add("image-0.png", b"x")
        st3.commit()
    assert ws.ls("runs") == ["runs/r5"]


def test_staging_failure_mid_commit_leaves_nothing(ws, monkeypatch):
    ws.write_bytes("runs/old/image-0.png", b"keep me")
    attempts = _fail_on_nth_write(monkeypatch, ws, 2)
    st = ws.stage("runs/new/deep")
    for i in range(3):
        st.add(f"image-{i}.png", b"img%d" % i)
    st.add("run.json", b"{}", kind="manifest")
    with pytest.raises(OSError, match="simulated"):
        st.commit()
    assert len(attempts) == 2
    assert st.state == "discarded"
    monkeypatch.undo()
    assert _all_files(ws) == ["runs/", "runs/old/", "runs/old/image-0.png"]
    assert ws.read_bytes("runs/old/image-0.png") == b"keep me"


def test_staging_failure_on_first_write_in_fresh_workspace(ws, monkeypatch):
    _fail_on_nth_write(monkeypatch, ws, 1)
    st = ws.stage("runs/x")
    st.add("image-0.png", b"a")
    with pytest.raises(OSError):
        st.commit()
    monkeypatch.undo()
    assert ws.ls("") == []


@pytest.mark.parametrize(
    ("name", "exc"),
    [("../escape.png", SourceImageError), ("", InputError), ("a/../../b", SourceImageError)],
)
def test_staging_refuses_bad_names(ws, name, exc):
    st = ws.stage("runs/r")
    with pytest.raises(exc):
        st.add(name, b"x")


def test_staging_refuses_duplicates_and_bad_run_dir(ws):
    st = ws.stage("runs/r")
    st.add("a.png", b"x")
    with pytest.raises(InputError):
        st.add("a.png", b"y")
    with pytest.raises(InputError):
        st.add("b.png", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(SourceImageError) as err:
        ws.stage("../elsewhere")
    assert err.value.field == "run_dir"
    with pytest.raises(InputError):
        ws.stage(".")


# -- PNG --------------------------------------------------------------------------


def test_png_metadata_round_trip(ws):
    image = Image.new("RGB", (32, 16), (10, 20, 30))
    meta = {"prompt": "a cat, 猫", "seed": 42, "guidance": 7.5, "lora": {"a": 1}, "nsfw": False}
    data = encode_png(image, meta)
    ref = ws.write_bytes("runs/r/image-0.png", data)
    raw = ws.read_bytes(ref)
    text = read_png_metadata(raw)
    assert text["prompt"] == "a cat, 猫"
    assert text["seed"] == "42"
    assert text["guidance"] == "7.5"
    assert json.loads(text["lora"]) == {"a": 1}
    assert text["nsfw"] == "false"
    assert json.loads(text[METADATA_KEY]) == meta
    assert read_imagenodes_metadata(raw) == meta
    with Image.open(io.BytesIO(raw)) as back:
        assert back.format == "PNG"
        assert back.size == (32, 16)
        assert back.convert("RGB").getpixel((5, 5)) == (10, 20, 30)


def test_png_converts_unsupported_modes_and_handles_empty_metadata():
    data = encode_png(Image.new("CMYK", (4, 4)), {})
    assert read_imagenodes_metadata(data) == {}
    assert read_png_metadata(data) == {METADATA_KEY: "{}"}


@pytest.mark.parametrize("key", ["", " lead", "x" * 80, "snow☃", METADATA_KEY, 3])
def test_png_refuses_bad_keys(key):
    with pytest.raises(InputError) as err:
        encode_png(Image.new("RGB", (2, 2)), {key: "v"})
    assert err.value.field == "metadata"


def test_png_metadata_of_non_png():
    with pytest.raises(SourceImageError) as err:
        read_png_metadata(b"GIF89a not really", field="image")
    assert err.value.field == "image"
