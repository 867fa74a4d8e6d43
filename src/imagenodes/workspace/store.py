"""Workspace storage: node inputs and outputs live behind one fsspec URL.

Nodes hand builders *references* (URIs) instead of bytes so results stay small in
run records and later nodes can consume them by reference.  The same code serves a
local directory, ``memory://`` (tests) and ``s3://`` (shared deployments), so every
path goes through two choke points:

* :meth:`Workspace.relpath` turns whatever a builder sends back into a
  workspace-relative path and refuses anything that would escape the root.  A
  reference is user input: without this check ``../`` or ``file:///etc/passwd``
  would turn an image node into a file-read primitive.
* :meth:`Workspace.write_bytes` never exposes a partial file, and :class:`Staging`
  buffers a whole run so the host can promise "nothing written for a rejected,
  failed or cancelled run".
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import fsspec
from fsspec import AbstractFileSystem

from imagenodes.errors import InputError, SourceImageError

#: Environment variable naming the default workspace URL or directory.
WORKSPACE_ENV = "IMAGENODES_WORKSPACE"
#: Used when neither an explicit URL nor the environment variable is given.
DEFAULT_WORKSPACE = "./workspace"
#: Prefix of in-flight temp files; :meth:`Workspace.ls` hides them so a listing never
#: shows a file that is still being written.
TEMP_PREFIX = ".imagenodes-tmp-"

_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})
# A URI scheme needs two or more characters so Windows drive letters ("C:\\x") are
# not mistaken for one.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
_ALLOWED_REFS = "a reference under the workspace root, or a workspace-relative path without '..'"


def _split_scheme(value: str) -> str | None:
    """Return the lower-cased URI scheme of ``value``, or None for a plain path."""
    match = _SCHEME_RE.match(value)
    return match.group(1).lower() if match else None


class Workspace:
    """Root of all files nodes read and write, addressed by fsspec URL.

    References are ``<url>/<relpath>``; local workspaces use ``file:///abs/path``
    URIs (not percent-encoded, matching fsspec, so ``fsspec.open(ref)`` works).
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, **storage_options: Any) -> None:
        if url is None:
            url = os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
        raw = os.fspath(url)
        if not isinstance(raw, str) or not raw.strip():
            raise InputError(
                "workspace URL is empty; give a directory or an fsspec URL "
                "(e.g. ./workspace, memory://name, s3://bucket/prefix)",
                field="workspace",
            )
        raw = raw.strip()
        if "::" in raw:
            raise InputError(
                f"chained fsspec URLs are not supported as a workspace: {raw!r}; "
                "give a single-protocol URL such as s3://bucket/prefix",
                field="workspace",
            )
        scheme = _split_scheme(raw)
        self.storage_options: dict[str, Any] = dict(storage_options)
        self.is_local: bool = scheme is None or scheme in _LOCAL_PROTOCOLS
        if self.is_local:
            path = raw.split(":", 1)[1] if scheme is not None else raw
            if scheme is not None:
                path = _strip_file_authority(path)
            root = os.path.abspath(os.path.expanduser(path))
            self.fs: AbstractFileSystem = fsspec.filesystem("file", **storage_options)
            self.root: str = root
            self.url: str = "file://" + root.replace(os.sep, "/")
            self._protocols: tuple[str, ...] = tuple(_LOCAL_PROTOCOLS)
            self._has_dirs: bool = True
            return
        try:
            fs, path = fsspec.core.url_to_fs(raw, **storage_options)
        except ImportError as exc:
            raise InputError(
                f"workspace protocol {scheme!r} needs an extra package ({exc}); "
                "install it (e.g. `pip install imagenodes[s3]`) or use a local directory",
                field="workspace",
            ) from exc
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"cannot open workspace {raw!r}: {exc}; use a local directory or a "
                "known fsspec protocol such as memory:// or s3://",
                field="workspace",
            ) from exc
        root = path.rstrip("/")
        if not root.strip("/"):
            raise InputError(
                f"workspace URL {raw!r} names no location; use e.g. memory://name or "
                "s3://bucket/prefix",
                field="workspace",
            )
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.fs = fs
        self.root = root
        # Not ``url``: that parameter is str | PathLike | None.
        full_url: str = fs.unstrip_protocol(root).rstrip("/")
        if protocols[0] == "memory":
            # memory:///name and memory://name are the same place; use the short form.
            full_url = f"memory://{root.lstrip('/')}"
        self.url = full_url
        self._protocols = protocols
        # Object stores have no directories, and s3fs' makedirs would even create a
        # missing *bucket* as a side effect, so only real-directory filesystems get it.
        self._has_dirs = not set(protocols) & _OBJECT_STORES

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    @property
    def protocols(self) -> tuple[str, ...]:
        """URI schemes whose references can point into this workspace."""
        return self._protocols

    # -- addressing ---------------------------------------------------------------

    def ref(self, relpath: str) -> str:
        """URI that builders can store and hand back later."""
        rel = self.relpath(relpath, field="path")
        return f"{self.url}/{rel}" if rel else self.url

    def refs_in(self, value: Any) -> list[str]:
        """Every reference into this workspace inside a JSON value (node outputs),
        depth first, in order, without repeats — what the MCP server inlines and the
        result cache checks for existence."""
        prefix = self.url + "/"
        found: list[str] = []

        def walk(item: Any) -> None:
            if isinstance(item, str):
                if item.startswith(prefix) and item not in found:
                    found.append(item)
            elif isinstance(item, list):
                for element in item:
                    walk(element)
            elif isinstance(item, dict):
                for element in item.values():
                    walk(element)

        walk(value)
        return found

    def relative_refs(self, value: Any) -> Any:
        """``value`` (a JSON value: outputs, inputs, an event's data, an error) as a
        remote client may see it: what names this workspace's location on the host —
        its URL, its folder — is taken out of every string.

        A reference into the workspace (``file:///srv/ws/runs/<run>/image-0.png``)
        becomes its workspace-relative path (``runs/<run>/image-0.png``), which every
        image input accepts back and resolves inside the workspace only; the location
        inside other text (an error message quoting a path) is cut the same way, and
        the bare location (``outside the workspace file:///srv/ws``) becomes
        ``<workspace>``.  The HTTP service shows every result, event and error through
        this; ``Host.run`` in Python keeps absolute references (a caller on the host
        opens them with any fsspec call).
        """
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list):
            return [self.relative_refs(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.relative_refs(item) for item in value)
        if isinstance(value, dict):
            return {key: self.relative_refs(item) for key, item in value.items()}
        return value

    def _scrub(self, text: str) -> str:
        for base, bare in self._locations:
            if base in text:
                text = bare.sub("<workspace>", text.replace(base + "/", ""))
        return text

    @functools.cached_property
    def _locations(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        """The spellings of this workspace's location, longest first: its URL, and
        for a local one its folder and the folder's real path (with and without
        ``file://``).  A root of ``/`` is left alone: cutting it would cut every path."""
        found: list[str] = []
        if self.is_local:
            for root in {_posix(self.root), _posix(os.path.realpath(self.root))}:
                if root.strip("/"):
                    found += [root, "file://" + root]
        elif self.root.strip("/"):
            found += [self.url, self.root]
        ordered = sorted(set(found), key=len, reverse=True)
        # Bare: not followed by more of a name (``/srv/ws2`` is another folder).
        return tuple((base, re.compile(re.escape(base) + r"(?![\w.\-/])")) for base in ordered)

    def relpath(self, ref_or_path: str | os.PathLike[str], *, field: str = "path") -> str:
        """Workspace-relative path of a reference, refusing anything outside the root.

        Any ``..`` component is refused outright (even one that would stay inside)
        because object stores treat it literally while local filesystems resolve it,
        so allowing it would make the same reference mean different files.
        """
        try:
            value = os.fspath(ref_or_path)
        except TypeError:
            value = None
        if not isinstance(value, str):
            raise SourceImageError(
                f"expected a workspace reference or path string, got "
                f"{type(ref_or_path).__name__}; allowed: {_ALLOWED_REFS}",
                field=field,
            )
        if not value.strip():
            raise SourceImageError(
                f"empty path; allowed: {_ALLOWED_REFS}",
                field=field,
            )
        if "\x00" in value:
            raise SourceImageError("path contains a NUL character", field=field)
        scheme = _split_scheme(value)
        if scheme is not None:
            return self._relpath_from_uri(value, scheme, field)
        if self.is_local and os.path.isabs(value):
            return self._relpath_under_root(_posix(value), field, original=value)
        if not self.is_local and value.startswith("/"):
            return self._relpath_under_root(value, field, original=value)
        return _clean_relative(
            value.replace(os.sep, "/") if self.is_local else value, field, original=value
        )

    def _relpath_from_uri(self, value: str, scheme: str, field: str) -> str:
        if scheme not in self._protocols:
            raise SourceImageError(
                f"{_redact(value)!r} is outside the workspace "
                f"(protocol {scheme}:// is not the workspace's); allowed: {_ALLOWED_REFS}",
                field=field,
            )
        if self.is_local:
            path = _strip_file_authority(value.split(":", 1)[1])
            if not path.startswith("/"):
                raise SourceImageError(
                    f"file URI {value!r} must be absolute (file:///abs/path); "
                    f"allowed: {_ALLOWED_REFS}",
                    field=field,
                )
            return self._relpath_under_root(path, field, original=value)
        return self._relpath_under_root(self.fs._strip_protocol(value), field, original=value)

    def _relpath_under_root(self, path: str, field: str, *, original: str) -> str:
        parts = path.split("/")
        if ".." in parts:
            raise SourceImageError(
                f"{_refused_form(original, path)!r} contains '..'; allowed: {_ALLOWED_REFS}",
                field=field,
            )
        path = path.rstrip("/")
        roots = [_posix(self.root)]
        if self.is_local:
            real = _posix(os.path.realpath(self.root))
            if real not in roots:
                roots.append(real)
        for root in roots:
            if path == root:
                return ""
            if path.startswith(root.rstrip("/") + "/"):
                rest = path[len(root.rstrip("/")) + 1 :]
                return _clean_relative(rest, field, original=original)
        raise SourceImageError(
            f"{_redact(original)!r} is outside the workspace; allowed: {_ALLOWED_REFS}",
            field=field,
        )

    def _full(self, rel: str) -> str:
        """Filesystem path of a (validated) relative path."""
        if not rel:
            return self.root
        if self.is_local:
            return os.path.join(self.root, *rel.split("/"))
        return f"{self.root}/{rel}"

    def _locate(
        self, ref_or_rel: str | os.PathLike[str], field: str, *, allow_root: bool = False
    ) -> tuple[str, str]:
        """(relpath, fs path), re-checking local symlinks so a link planted inside
        the workspace cannot point reads or writes at files outside it."""
        if allow_root and isinstance(ref_or_rel, str) and not ref_or_rel.strip():
            return "", self.root
        rel = self.relpath(ref_or_rel, field=field)
        full = self._full(rel)
        if self.is_local and rel:
            real_root = os.path.realpath(self.root)
            real = os.path.realpath(full)
            if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
                raise SourceImageError(
                    f"{rel!r} resolves (via a symlink) outside the workspace; "
                    f"allowed: {_ALLOWED_REFS}",
                    field=field,
                )
        return rel, full

    # -- reading ------------------------------------------------------------------

    def read_bytes(
        self,
        ref_or_rel: str | os.PathLike[str],
        *,
        field: str = "path",
        max_bytes: int | None = None,
    ) -> bytes:
        """Whole file contents; ``max_bytes`` is checked before reading so a huge
        file is refused without being pulled into memory."""
        rel, full = self._locate(ref_or_rel, field)
        try:
            if self.is_local:
                # Only regular files: opening a FIFO (or a device) inside the workspace
                # would block the worker thread for ever, past any run timeout.
                mode = os.stat(full).st_mode
                if not stat.S_ISREG(mode):
                    raise SourceImageError(
                        f"{rel!r} is not a regular file; pass a file reference",
                        field=field,
                    )
            if max_bytes is not None:
                size = self.fs.size(full)
                if size is not None and size > max_bytes:
                    raise SourceImageError(
                        f"{rel!r} is {size} bytes; the maximum is {max_bytes} bytes",
                        field=field,
                    )
            data = self.fs.cat_file(full)
        except FileNotFoundError as exc:
            raise SourceImageError(
                f"{rel!r} does not exist in the workspace; "
                "pass a reference returned by an earlier node or an existing file",
                field=field,
            ) from exc
        except IsADirectoryError as exc:
            raise SourceImageError(
                f"{rel!r} is a directory, not a file; pass a file reference",
                field=field,
            ) from exc
        except OSError as exc:
            # The reason only: an OSError's text names the file's path on the host.
            raise SourceImageError(
                f"could not read {rel!r} from the workspace: {exc.strerror or type(exc).__name__}",
                field=field,
            ) from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise SourceImageError(
                f"{rel!r} is {len(data)} bytes; the maximum is {max_bytes} bytes",
                field=field,
            )
        return bytes(data)

    def exists(self, ref_or_rel: str | os.PathLike[str], *, field: str = "path") -> bool:
        """True for an existing file or directory inside the workspace."""
        _, full = self._locate(ref_or_rel, field)
        return bool(self.fs.exists(full))

    def ls(self, rel_dir: str = "", *, field: str = "path") -> list[str]:
        """Sorted workspace-relative paths directly under ``rel_dir`` ([] if absent).

        Returning relative paths (not bare names) lets callers feed them straight
        back to :meth:`read_bytes` or :meth:`ref`.
        """
        rel, full = self._locate(rel_dir, field, allow_root=True)
        try:
            entries = self.fs.ls(full, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = f"{rel}/" if rel else ""
        out: set[str] = set()
        own = _posix(full).rstrip("/")
        for entry in entries:
            path = _posix(str(entry)).rstrip("/")
            if path == own:  # ls() of a file lists the file itself: no children
                continue
            name = posixpath.basename(path)
            if not name or name.startswith(TEMP_PREFIX):
                continue
            out.add(prefix + name)
        return sorted(out)

    def read_json(self, ref_or_rel: str | os.PathLike[str], *, field: str = "path") -> Any:
        """Parsed JSON file (run records, manifests)."""
        data = self.read_bytes(ref_or_rel, field=field)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SourceImageError(
                f"{self.relpath(ref_or_rel, field=field)!r} is not valid UTF-8 JSON: {exc}",
                field=field,
            ) from exc

    # -- writing ------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes, *, field: str = "path") -> str:
        """Write a whole file atomically and return its reference.

        Local: temp file in the same directory + ``os.replace`` (atomic rename on
        one filesystem).  Elsewhere: one ``pipe_file`` of the complete bytes, since
        object stores publish an object only when its upload completes.  Storage
        errors (disk full, permissions, network) propagate unchanged: they are not
        the caller's input mistakes.
        """
        rel, full = self._locate(rel, field, allow_root=True)
        if not rel:
            raise InputError(
                "cannot write to the workspace root itself; give a file path", field=field
            )
        payload = bytes(data)
        if self.is_local:
            _atomic_local_write(full, payload)
        else:
            parent = posixpath.dirname(full)
            if self._has_dirs and parent and parent != self.root:
                with contextlib.suppress(FileExistsError):
                    self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(full, payload)
        return f"{self.url}/{rel}"

    def write_json(self, rel: str, obj: Any, *, field: str = "path") -> str:
        """Write ``obj`` as indented UTF-8 JSON (readable in the workspace browser)."""
        data = json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8")
        return self.write_bytes(rel, data + b"\n", field=field)

    def remove(self, rel: str, recursive: bool = False, *, field: str = "path") -> None:
        """Delete a file (or a directory tree with ``recursive``); absent is fine,
        so cleanup after a failure can call it without checking first."""
        rel, full = self._locate(rel, field, allow_root=True)
        if not rel:
            raise InputError(
                "refusing to remove the workspace root; give a path inside it", field=field
            )
        try:
            if self.is_local and os.path.isdir(full) and not recursive:
                os.rmdir(full)
            else:
                self.fs.rm(full, recursive=recursive)
        except FileNotFoundError:
            return

    def sweep_incomplete(self, grace_s: float) -> list[str]:
        """Remove what a crashed process left behind, older than ``grace_s`` seconds.

        A run is committed images first and ``run.json`` last, so a run folder without
        ``run.json`` is one whose process died mid-commit; a ``.imagenodes-tmp-*`` file
        is a write that never reached its rename.  Only local workspaces (object-store
        writes are atomic per object).  Returns the workspace paths removed, so the host
        can report them.
        """
        if not self.is_local:
            return []
        root = Path(self.root)
        cutoff = time.time() - grace_s
        removed: list[str] = []
        runs = root / "runs"
        if runs.is_dir():
            for run in sorted(runs.iterdir()):
                if not run.is_dir() or (run / "run.json").exists():
                    continue
                newest = max((p.stat().st_mtime for p in run.rglob("*")), default=0.0)
                if max(newest, run.stat().st_mtime) < cutoff:
                    shutil.rmtree(run, ignore_errors=True)
                    removed.append(str(run.relative_to(root)))
        # Temp files of the library's records (sessions, cache, packs, trainings,
        # uploads).  Completed run folders are not walked: a crash mid-commit leaves a
        # folder without run.json, which the loop above removes whole, temp files in it.
        if not root.is_dir():
            return removed
        tops = sorted(p for p in root.iterdir() if p.name != "runs")
        for top in tops:
            found = top.rglob(f"{TEMP_PREFIX}*") if top.is_dir() else [top]
            for tmp in sorted(p for p in found if p.name.startswith(TEMP_PREFIX)):
                with contextlib.suppress(OSError):
                    if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed.append(str(tmp.relative_to(root)))
        return removed

    def stage(self, run_dir: str, *, field: str = "run_dir") -> Staging:
        """Buffer one run's files in memory; see :class:`Staging`."""
        return Staging(self, run_dir, field=field)


def _posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


def _strip_file_authority(path: str) -> str:
    """``//localhost/x`` / ``///x`` / ``/x`` → ``/x`` (the forms RFC 8089 allows)."""
    if path.startswith("//"):
        authority, _, rest = path[2:].partition("/")
        if authority not in ("", "localhost"):
            # A remote host: keep it visibly non-absolute so the caller refuses it.
            return f"//{authority}/{rest}"
        return "/" + rest
    return path


def _clean_relative(value: str, field: str, *, original: str) -> str:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceImageError(
            f"{_refused_form(original, value)!r} contains '..'; allowed: {_ALLOWED_REFS}",
            field=field,
        )
    return "/".join(parts)


def _redact(value: str) -> str:
    """Drop query strings and credentials so signed URLs do not end up in logs."""
    value = value.split("?", 1)[0].split("#", 1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1", value)


def _refused_form(original: str, checked: str) -> str:
    """What to show for a refused path: the redacted input when it still shows the
    reason, else the path as it was checked (for a workspace path, a ``?`` is part of
    the file name, so ``a.png?p=../x`` must not be shown as ``a.png``)."""
    shown = _redact(original)
    return shown if ".." in shown.split("/") else checked


def _atomic_local_write(full: str, payload: bytes) -> None:
    directory = os.path.dirname(full)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, full)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class StagedFile:
    """One buffered file of a run."""

    rel: str
    data: bytes
    kind: str
    ref: str


class Staging:
    """All files of one run, held in memory until :meth:`commit`.

    The host only commits after the run succeeded, so rejected, failed or cancelled
    runs never touch storage.  Leaving the ``with`` block without calling
    :meth:`commit` discards the buffer — on an exception *and* on a normal exit —
    so an early ``return`` on cancellation cannot publish half a run.
    Commit order: ``image`` files, then other kinds in insertion order, then
    ``manifest`` files, so a reader that sees ``run.json`` knows the images exist,
    then ``record`` files outside the run directory (:meth:`add_record`), so a session
    or cache entry never points at a run that is not there.
    """

    def __init__(self, workspace: Workspace, run_dir: str, *, field: str = "run_dir") -> None:
        self.workspace = workspace
        self.field = field
        self.run_dir = workspace.relpath(run_dir, field=field)
        if not self.run_dir:
            raise InputError(
                "run_dir must be a directory inside the workspace, not its root", field=field
            )
        self._files: dict[str, StagedFile] = {}
        self._state: Literal["open", "committed", "discarded"] = "open"

    def __repr__(self) -> str:
        return (
            f"Staging({self.workspace.ref(self.run_dir)!r}, files={len(self._files)}, "
            f"state={self._state})"
        )

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[StagedFile]:
        return iter(list(self._files.values()))

    @property
    def state(self) -> str:
        return self._state

    @property
    def run_ref(self) -> str:
        return self.workspace.ref(self.run_dir)

    def add(self, name: str, data: bytes, kind: str = "image") -> str:
        """Buffer a file and return the reference it will have after commit."""
        if self._state != "open":
            raise InputError(
                f"staging for {self.run_dir!r} is already {self._state}", field=self.field
            )
        rel_name = _clean_relative(str(name), "name", original=str(name)) if name else ""
        if not rel_name:
            raise InputError(
                "staged file needs a non-empty name inside the run directory", field="name"
            )
        if rel_name in self._files:
            raise InputError(
                f"{rel_name!r} was already staged for this run; names must be unique", field="name"
            )
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InputError(f"staged data must be bytes, got {type(data).__name__}", field="data")
        rel = f"{self.run_dir}/{rel_name}"
        ref = self.workspace.ref(rel)
        self._files[rel_name] = StagedFile(rel=rel, data=bytes(data), kind=kind, ref=ref)
        return ref

    def add_record(self, rel: str, data: bytes) -> str:
        """Buffer a file *outside* the run directory (a session history entry, a result
        cache index) so it is written with the run, after its manifest, or not at all.

        ``rel`` is workspace-relative and goes through the same path checks as every
        workspace write.
        """
        if self._state != "open":
            raise InputError(
                f"staging for {self.run_dir!r} is already {self._state}", field=self.field
            )
        clean = self.workspace.relpath(rel, field="path")
        key = "/" + clean  # cannot collide with a run-directory name (never absolute)
        if not clean or key in self._files:
            raise InputError(f"record {rel!r} is empty or already staged", field="path")
        ref = self.workspace.ref(clean)
        self._files[key] = StagedFile(rel=clean, data=bytes(data), kind="record", ref=ref)
        return ref

    def _ordered(self) -> list[StagedFile]:
        rank = {"image": 0, "manifest": 2, "record": 3}
        return sorted(self._files.values(), key=lambda f: rank.get(f.kind, 1))

    def commit(self) -> list[str]:
        """Write every buffered file; on any failure remove what was written.

        Returns refs in write order.  Directories created by this commit are removed
        again on failure too, so a failed commit leaves the workspace as it was.
        """
        if self._state != "open":
            raise InputError(
                f"staging for {self.run_dir!r} is already {self._state}", field=self.field
            )
        ws = self.workspace
        files = self._ordered()
        new_dirs = self._missing_dirs(files)
        written: list[str] = []
        try:
            for staged in files:
                ws.write_bytes(staged.rel, staged.data, field=self.field)
                written.append(staged.rel)
        except BaseException:
            for rel in reversed(written):
                with contextlib.suppress(Exception):
                    ws.remove(rel)
            for rel in new_dirs:
                with contextlib.suppress(Exception):
                    _remove_empty_dir(ws, rel)
            self._files.clear()
            self._state = "discarded"
            raise
        self._files.clear()
        self._state = "committed"
        return [ws.ref(rel) for rel in written]

    def _missing_dirs(self, files: list[StagedFile]) -> list[str]:
        """Relative dirs that do not exist yet, deepest first (for rollback)."""
        dirs: set[str] = set()
        for staged in files:
            parent = posixpath.dirname(staged.rel)
            while parent:
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        ws = self.workspace
        if not ws._has_dirs:
            return []
        missing = [d for d in dirs if not ws.fs.exists(ws._full(d))]
        return sorted(missing, key=lambda d: d.count("/"), reverse=True)

    def discard(self) -> None:
        """Drop the buffer; nothing was written, so nothing needs undoing."""
        if self._state == "open":
            self._files.clear()
            self._state = "discarded"

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def _remove_empty_dir(ws: Workspace, rel: str) -> None:
    full = ws._full(rel)
    if ws.is_local:
        os.rmdir(full)  # fails (and is suppressed) if something else put files there
        return
    ws.fs.rmdir(full)
