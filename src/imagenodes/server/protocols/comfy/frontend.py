"""What the ComfyUI editor needs to boot and keep a user's work, and its files at ``/comfy/``.

The editor (PyPI ``comfyui-frontend-package``, GPL-3.0, installed as its own package by
``pip install "imagenodes[comfy]"``; never copied into this one) is a single-page app
that derives its API base from its own path: opened at ``/comfy/``, it calls
``/comfy/api/…`` and opens ``/comfy/ws``.  ComfyUI registers every route twice, bare
and under ``/api``, so every route here answers at ``/comfy/<route>`` and
``/comfy/api/<route>`` alike.

* **One user.** ComfyUI's single-user mode: ``GET /users`` is
  ``{"storage": "server", "migrated": true}`` (the editor then keeps settings and
  workflows on the server, not in the browser), ``POST /users`` answers the default
  user.
* **Settings** (``/settings``, ``/settings/{id}``): one JSON object in
  ``<state>/comfy/settings.json``, written whole and atomically (temp file, then
  rename), merged as ComfyUI merges, over :data:`DEFAULT_SETTINGS`.
* **User data** (``/userdata…``, ``/v2/userdata``): saved workflows, subgraph
  blueprints, keybinding presets, ``user.css`` — files under ``<state>/comfy/userdata/``
  named by relative paths as strict as ``/v1/files``' (:func:`user_path`): no ``..``,
  no absolute path, no backslash or control character, no symlink followed, bounded
  length, depth and size.  Bodies are stored as sent (the security middleware counts
  them against ``max_upload_bytes`` and leaves them unparsed, ``USERDATA_PREFIXES``).
* **Boot look-ups with nothing behind them here** (``/i18n``, ``/global_subgraphs``,
  ``/workflow_templates``, ``/node_replacements``, ``/experiment/models``, the
  templates index, the ``/comfy/internal`` log and folder routes of its panels): a
  well-formed empty answer, so the editor's console shows no 404.
* **Static files**: the package's ``static/`` directory, by the last router — a GET
  catch-all, so any API route of :mod:`.v1` and :mod:`.v2` wins.  Without the package,
  ``/comfy/`` says how to install it.

Blocking file work runs on the service's ``work`` pool (:mod:`imagenodes.server.pools`).
Token, Origin and Host rules are the security middleware's, as for ``/v1``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagenodes.errors import (
    FileNotFound,
    InputError,
    InvalidJson,
    JobConflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from imagenodes.server import pools
from imagenodes.server.compose import state_dir
from imagenodes.server.service import JobService
from imagenodes.server.settings import ServerSettings

__all__ = [
    "INSTALL_HINT",
    "UserFiles",
    "routers",
    "static_dir",
    "user_path",
]

_log = logging.getLogger("imagenodes.server")

PREFIX = "/comfy"
#: Both spellings of every route (ComfyUI registers each bare and under ``/api``).
BASES = (PREFIX, f"{PREFIX}/api")
#: What ``/comfy/`` and ``imagenodes serve`` say when the editor is not installed.
INSTALL_HINT = 'pip install "imagenodes[comfy]"'
#: The only user of single-user mode (ComfyUI's ``default``).
DEFAULT_USER = "default"

# -- limits ------------------------------------------------------------------------------------
#: Longest user-data path (characters) and deepest folder nesting.
MAX_PATH_CHARS = 512
MAX_PATH_PARTS = 8
#: Longest single name in a path, in UTF-8 bytes (what common file systems allow).
MAX_NAME_BYTES = 255
#: Most entries a listing returns (the rest are left out; the editor lists workflows).
MAX_LISTING = 10_000
#: Largest settings document kept (the editor's is a few KiB).
MAX_SETTINGS_BYTES = 4 * 1024 * 1024
#: Longest setting id (``Comfy.Workflow.WorkflowTabsPosition`` is 35).
MAX_SETTING_ID = 256
#: Settings a user has not set, where ComfyUI's default does not fit this service: no
#: release check against api.comfy.org (the editor's page may connect to this server
#: only).  A user's own value wins; defaults are never written to the settings file.
DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.Notification.ShowVersionUpdates": False,
}
#: Characters refused in a user-data name: ComfyUI's own list of characters a file
#: name must avoid (``:\\/*?"<>|``), so a name saved here is portable.
_FORBIDDEN = re.compile(r'[\\:*?"<>|]')
#: Names the service uses for its own temporary files in the user-data folder.
_TEMP_PREFIX = ".imagenodes-"

#: Media types a stored file is served with; anything else is an attachment of
#: ``application/octet-stream``.  Never HTML or script: a stored file is served from the
#: editor's own origin, so a typed HTML file would be stored cross-site scripting.
_SERVED_TYPES = {
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}
#: On every stored file served: nothing in it runs, whatever it holds.
_STORED_FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "Cache-Control": "no-cache",
}


# -- the editor's files ------------------------------------------------------------------------
def static_dir() -> Path | None:
    """The installed editor's ``static/`` directory (None: ``comfyui-frontend-package``
    is not installed, or is not installed as plain files)."""
    try:
        root = importlib.resources.files("comfyui_frontend_package") / "static"
    except ModuleNotFoundError:
        return None
    path = Path(str(root))
    return path if (path / "index.html").is_file() else None


def _inline_script_hashes(index_html: str) -> list[str]:
    """CSP hashes of the inline ``<script>`` blocks of the editor's ``index.html``.

    The page sets its splash colours in one inline script before its modules load;
    allowing exactly that script by hash keeps ``'unsafe-inline'`` out of
    ``script-src``, and an edited or injected script still does not run.
    """
    hashes = []
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", index_html, re.S | re.I):
        if "src=" in attrs.lower() or not body.strip():
            continue
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return hashes


def content_security_policy(index_html: str) -> str:
    """The editor's CSP: its own scripts (plus its inline splash script by hash);
    styles inline (its components set ``style`` attributes and inject ``<style>``);
    images, fonts and workers from itself, ``data:`` and ``blob:`` (previews, canvas
    exports, three.js); connections to itself only (REST and its ``/comfy/ws`` socket;
    nothing else: no telemetry leaves the machine); no plug-ins, no framing, no form
    posts elsewhere.

    ``'wasm-unsafe-eval'``: the editor compiles a WebAssembly module at boot (refused
    without it: a page error).  No ``'unsafe-eval'``: nothing the editor runs here needs
    ``eval`` or ``new Function`` (booting, building, running and saving a graph, its
    settings, panels and dialogs show no CSP violation in the tests).
    """
    scripts = " ".join(["'self'", "'wasm-unsafe-eval'", *_inline_script_hashes(index_html)])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; "
        "worker-src 'self' blob:; connect-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
    )


def _page_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


# -- user-data paths ---------------------------------------------------------------------------
def user_path(name: str, *, field: str = "file") -> str:
    """``name`` as a checked relative path of the user-data folder (``/`` separated).

    The rules of ``/v1/files`` for a folder the client writes: one decoded name, no
    ``..`` or ``.`` part, no empty part (``a//b``, a leading or trailing ``/``: no
    absolute path), no backslash, drive colon or other character ComfyUI tells users
    to avoid, no control character, at most :data:`MAX_PATH_CHARS` characters,
    :data:`MAX_PATH_PARTS` parts and :data:`MAX_NAME_BYTES` bytes a part, and none of
    the service's own temporary names.  Unicode is kept as sent (NFC-normalised, so the
    same name typed twice is one file).
    """
    name = unicodedata.normalize("NFC", name)
    problem = None
    parts = name.split("/")
    if not name:
        problem = "is empty"
    elif len(name) > MAX_PATH_CHARS:
        problem = f"is longer than {MAX_PATH_CHARS} characters"
    elif len(parts) > MAX_PATH_PARTS:
        problem = f"has more than {MAX_PATH_PARTS} parts"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "holds a control character"
    elif _FORBIDDEN.search(name):
        problem = 'holds one of \\ : * ? " < > |'
    elif any(part in ("", ".", "..") for part in parts):
        problem = "has an empty, '.' or '..' part (it must be relative and stay inside)"
    elif any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        problem = f"has a name longer than {MAX_NAME_BYTES} bytes"
    elif any(part.startswith(_TEMP_PREFIX) for part in parts):
        problem = f"starts with {_TEMP_PREFIX!r}, kept for the service's own files"
    if problem:
        shown = name if len(name) <= 80 else f"{name[:60]}…({len(name)} characters)"
        raise InputError(
            f"user data path {shown!r} {problem}",
            field=field,
            solution="Name a file inside the user folder, e.g. workflows/my flow.json "
            "(URL-encoded as one path segment: workflows%2Fmy%20flow.json)",
        )
    return name


class FileInfo(TypedDict):
    """A listed file as ComfyUI's ``full_info`` shows it (times in seconds)."""

    path: str
    size: int
    modified: float
    created: float


class UserFiles:
    """The one user's settings and files under ``<state>/comfy`` (blocking: call its
    methods on a worker thread).

    Every write goes to a temporary file in the same folder, then is renamed into
    place, so a reader never sees half a file and a crash leaves the old one.  A lock
    serialises the read-modify-write of the settings and the exists-then-write of
    ``overwrite=false`` within this process; the no-overwrite rename itself is also
    atomic (a hard link, which fails when the name exists).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.settings_file = self.root / "settings.json"
        self.userdata = self.root / "userdata"
        self._lock = threading.Lock()

    # -- settings ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The settings: :data:`DEFAULT_SETTINGS` under the stored ones."""
        return {**DEFAULT_SETTINGS, **self._stored()}

    def _stored(self) -> dict[str, Any]:
        """The stored settings (``{}`` when none were saved, or the file is unreadable:
        a corrupt file must not stop the editor from booting; it is logged)."""
        try:
            data = self.settings_file.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            _log.warning("ComfyUI settings file %s is not JSON; using {}", self.settings_file)
            return {}
        return value if isinstance(value, dict) else {}

    def setting(self, setting_id: str) -> Any:
        """One setting's value (None when it is not set, as ComfyUI answers)."""
        return self.settings().get(setting_id)

    def update_settings(self, values: dict[str, Any]) -> None:
        """Merge ``values`` into the stored settings (ComfyUI's ``POST /settings``)."""
        with self._lock:
            self._save_settings({**self._stored(), **values})

    def set_setting(self, setting_id: str, value: Any) -> None:
        """Store one setting (ComfyUI's ``POST /settings/{id}``)."""
        with self._lock:
            self._save_settings({**self._stored(), setting_id: value})

    def _save_settings(self, settings: dict[str, Any]) -> None:
        data = json.dumps(settings, indent=2, ensure_ascii=False).encode()
        if len(data) > MAX_SETTINGS_BYTES:
            raise PayloadTooLarge(
                f"the settings would take {len(data)} bytes; at most {MAX_SETTINGS_BYTES}",
                field="settings",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_atomic(self.settings_file, data, overwrite=True)

    # -- user data -----------------------------------------------------------------------------
    def _resolve(self, rel: str, *, field: str = "file", must_exist: bool = False) -> Path:
        """The file of the checked relative path ``rel``: no part of it may be a
        symlink (wherever it points), and every existing folder on the way must be a
        real folder inside the user-data folder."""
        path = self.userdata.joinpath(*rel.split("/"))
        here = self.userdata
        for part in rel.split("/"):
            here = here / part
            if here.is_symlink():
                raise FileNotFound(f"no user data file {rel!r}", field=field)
        if must_exist and not path.is_file():
            raise FileNotFound(f"no user data file {rel!r}", field=field)
        return path

    def _info(self, path: Path, relative_to: Path) -> FileInfo:
        stat = path.stat()
        return {
            "path": path.relative_to(relative_to).as_posix(),
            "size": stat.st_size,
            "modified": stat.st_mtime,
            "created": stat.st_ctime,
        }

    def _walk(self, folder: Path, *, recurse: bool) -> Iterator[Path]:
        """Regular files under ``folder`` (symlinks and hidden names — the service's
        temporary files among them — left out; folders entered only when real), in
        name order, at most :data:`MAX_LISTING`."""
        count = 0
        stack = [folder]
        while stack:
            here = stack.pop()
            try:
                entries = sorted(os.scandir(here), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            subfolders = []
            for entry in entries:
                # Hidden names are left out as ComfyUI's glob leaves them out (the
                # editor keeps its bookmarks in workflows/.index.json, not a workflow).
                if entry.is_symlink() or entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recurse:
                        subfolders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)
                    count += 1
                    if count >= MAX_LISTING:
                        return
            stack.extend(reversed(subfolders))

    def listing(
        self, directory: str, *, recurse: bool, full_info: bool, split: bool
    ) -> list[FileInfo] | list[str] | list[list[str]]:
        """``GET /userdata?dir=…``: the files under ``directory``, paths relative to it.

        As ComfyUI: ``full_info`` gives ``{path, size, modified, created}``, else the
        path, or with ``split`` ``[path, *parts]``.  A folder that does not exist yet is
        an empty list (ComfyUI answers 404, which the editor reads as empty, but the
        browser would log it as a failed request at every boot of a fresh install).
        """
        rel = user_path(directory.rstrip("/"), field="dir")  # "workflows/" is a folder
        folder = self._resolve(rel, field="dir")
        if not folder.is_dir():
            return []
        files = list(self._walk(folder, recurse=recurse))
        if full_info:
            return [self._info(path, folder) for path in files]
        names = [path.relative_to(folder).as_posix() for path in files]
        if split:
            return [[name, *name.split("/")] for name in names]
        return names

    def listing_v2(self, directory: str) -> list[dict[str, Any]]:
        """``GET /v2/userdata?path=…``: files and folders under ``directory`` (all the
        way down), paths relative to the user folder, folders first, then by name."""
        if directory.rstrip("/"):
            rel = user_path(directory.rstrip("/"), field="path")
            folder = self._resolve(rel, field="path")
            if not folder.exists():
                raise FileNotFound(f"no user data folder {rel!r}", field="path")
            if not folder.is_dir():
                raise InputError(f"user data path {rel!r} is not a folder", field="path")
        else:
            folder = self.userdata
            if not folder.is_dir():
                return []
        results: list[dict[str, Any]] = []
        for current, dirs, files in os.walk(folder):
            here = Path(current)
            dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
            for name in dirs:
                rel_dir = (here / name).relative_to(self.userdata).as_posix()
                results.append({"name": name, "path": rel_dir, "type": "directory"})
            for name in sorted(files):
                path = here / name
                if path.is_symlink() or name.startswith(_TEMP_PREFIX) or not path.is_file():
                    continue
                stat = path.stat()
                results.append(
                    {
                        "name": name,
                        "path": path.relative_to(self.userdata).as_posix(),
                        "type": "file",
                        "size": stat.st_size,
                        "modified": stat.st_mtime,
                    }
                )
            if len(results) >= MAX_LISTING:
                break
        results.sort(key=lambda item: (item["type"] != "directory", item["name"].lower()))
        return results[:MAX_LISTING]

    def read(self, rel: str) -> bytes:
        """The bytes of a stored file (FILE_NOT_FOUND when there is none, or when it
        is a symlink or not a regular file)."""
        path = self._resolve(rel, must_exist=True)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise FileNotFound(f"no user data file {rel!r}", field="file") from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def write(self, rel: str, data: bytes, *, overwrite: bool, full_info: bool) -> FileInfo | str:
        """Store ``data`` as ``rel`` (folders made as needed).  ``overwrite=False`` and
        an existing file: JOB_CONFLICT (ComfyUI's 409).  Answers as ComfyUI does: the
        file's info with ``full_info``, else its path."""
        path = self._resolve(rel)
        with self._lock:
            self._make_folders(path.parent, rel)
            if path.exists() and not path.is_file():
                raise InputError(f"user data path {rel!r} is a folder", field="file")
            self._write_atomic(path, data, overwrite=overwrite, rel=rel)
        return self._info(path, self.userdata) if full_info else rel

    def delete(self, rel: str) -> None:
        """Remove a stored file (FILE_NOT_FOUND when there is none)."""
        path = self._resolve(rel, must_exist=True)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise FileNotFound(f"no user data file {rel!r}", field="file") from None

    def move(self, rel: str, dest: str, *, overwrite: bool, full_info: bool) -> FileInfo | str:
        """Rename ``rel`` to ``dest`` (folders made as needed; ``overwrite=False`` and
        an existing ``dest``: JOB_CONFLICT)."""
        source = self._resolve(rel, must_exist=True)
        target = self._resolve(dest, field="dest")
        with self._lock:
            if not source.is_file():
                raise FileNotFound(f"no user data file {rel!r}", field="file")
            self._make_folders(target.parent, dest, field="dest")
            if target.exists() and not target.is_file():
                raise InputError(f"user data path {dest!r} is a folder", field="dest")
            if source != target:
                if overwrite:
                    os.replace(source, target)
                else:
                    self._link_new(source, target, dest, field="dest")
                    source.unlink()
        return self._info(target, self.userdata) if full_info else dest

    def _make_folders(self, folder: Path, rel: str, *, field: str = "file") -> None:
        """Make the folders of a path (re-checked under the lock: none may be a
        symlink or a file)."""
        here = self.userdata
        here.mkdir(parents=True, exist_ok=True)
        for part in folder.relative_to(self.userdata).parts:
            here = here / part
            if here.is_symlink() or (here.exists() and not here.is_dir()):
                raise InputError(f"user data path {rel!r} goes through a file", field=field)
            here.mkdir(exist_ok=True)

    def _write_atomic(
        self, path: Path, data: bytes, *, overwrite: bool, rel: str | None = None
    ) -> None:
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            if overwrite:
                os.replace(temp, path)
            else:
                self._link_new(Path(temp), path, rel or path.name, field="file")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    @staticmethod
    def _link_new(source: Path, target: Path, rel: str, *, field: str) -> None:
        """Give ``source`` the name ``target`` only if that name is free (a hard link
        fails atomically when it exists; the caller removes the old name).  On a file
        system without hard links, the check and a rename under the caller's lock."""
        conflict = JobConflict(
            f"user data file {rel!r} exists",
            field=field,
            solution="Pass overwrite=true to replace it, or choose another name",
        )
        try:
            os.link(source, target)
        except FileExistsError:
            raise conflict from None
        except OSError:  # no hard links here (some network or FUSE file systems)
            if target.exists() or target.is_symlink():
                raise conflict from None
            shutil.copyfile(source, target)


# -- requests ----------------------------------------------------------------------------------
def _flag(request: Request, name: str, default: bool) -> bool:
    """A ComfyUI query flag: ``"true"`` (any case) is true; absent is ``default``;
    ``overwrite`` is false only when it says ``"false"``, as ComfyUI reads it."""
    value = request.query_params.get(name)
    if value is None:
        return default
    if name == "overwrite":
        return value != "false"
    return value.lower() == "true"


def _json_body(body: bytes, field: str) -> Any:
    """A body the security middleware already checked strictly (depth, numbers)."""
    if not body:
        raise InputError("the request body is empty; send a JSON value", field=field)
    try:
        return json.loads(body)
    except ValueError as exc:  # a route reached without the middleware (mounted bare)
        raise InvalidJson(f"the request body is not valid JSON: {exc}", field=field) from None


def _userdata_segments(request: Request, base: str) -> list[str]:
    """The encoded path segments after ``<base>/userdata/``, each decoded once.

    The editor sends a file's path as one segment (``workflows%2Fmy.json``) and a
    move as ``<file>/move/<dest>``; the server decodes ``%2F`` before routing, so the
    split is made on the raw path, where an encoded ``/`` is still ``%2F``.
    """
    raw = request.scope.get("raw_path")
    root = request.scope.get("root_path", "")
    if isinstance(raw, bytes | bytearray):
        path = raw.decode("latin-1").split("?", 1)[0]
        if root and path.startswith(root):
            path = path[len(root) :]
        rest = path[len(f"{base}/userdata/") :]
        return [unquote(part, errors="strict") for part in rest.split("/")]
    return [request.path_params["rest"]]  # no raw path: the whole decoded rest


def _file_of(segments: list[str]) -> str:
    if len(segments) != 1:
        raise FileNotFound(
            f"no user data route for {'/'.join(segments)[:120]!r}",
            field="file",
            solution="URL-encode the file's path as one segment (workflows%2Fmy.json)",
        )
    return user_path(segments[0])


def _served_type(rel: str) -> tuple[str, dict[str, str]]:
    ext = os.path.splitext(rel)[1].lower()
    media = _SERVED_TYPES.get(ext)
    if media is not None:
        return media, dict(_STORED_FILE_HEADERS)
    return "application/octet-stream", {**_STORED_FILE_HEADERS, "Content-Disposition": "attachment"}


#: User files the editor reads at every boot whether or not the user made them: absent,
#: they are answered with the empty value (body, media type) the editor starts from,
#: instead of ComfyUI's 404 — which the editor handles, but the browser logs as a failed
#: request.  Stored ones are served as any other file.
USERDATA_DEFAULTS: dict[str, tuple[bytes, str]] = {
    "user.css": (b"", "text/css; charset=utf-8"),  # linked by its page for the user's styles
    "comfy.templates.json": (b"[]", "application/json"),  # its node templates
    "workflows/.index.json": (b'{"favorites": []}', "application/json"),  # bookmarks
}

#: Boot look-ups answered with a well-formed "nothing here" (route → answer).
EMPTY_ANSWERS: dict[str, Any] = {
    "/i18n": {},
    "/global_subgraphs": {},
    "/workflow_templates": {},
    "/node_replacements": {},
    "/experiment/models": [],
}


def _internal_routes(api: APIRouter) -> None:
    """ComfyUI's ``/internal`` routes the editor's panels call (``/comfy/internal/…``,
    no ``/api`` twin): the server log (its bottom panel's terminal) and ComfyUI's own
    folders, of which this service has none to show — empty, never a 404."""

    @api.get(f"{PREFIX}/internal/logs", summary="ComfyUI: the server log (empty here)")
    async def logs() -> str:
        return ""

    @api.get(f"{PREFIX}/internal/logs/raw", summary="ComfyUI: the server log's entries")
    async def logs_raw() -> dict[str, Any]:
        return {"entries": [], "size": {"cols": 80, "rows": 24}}

    @api.patch(f"{PREFIX}/internal/logs/subscribe", summary="ComfyUI: follow the log")
    async def logs_subscribe() -> None:
        return None  # no log lines are ever sent over the socket

    @api.get(f"{PREFIX}/internal/folder_paths", summary="ComfyUI: its model folders")
    async def folder_paths() -> dict[str, Any]:
        return {}

    @api.get(f"{PREFIX}/internal/files/{{kind}}", summary="ComfyUI: files of a folder")
    async def files(kind: str) -> list[Any]:
        return []


def _api_router(service: JobService, settings: ServerSettings) -> APIRouter:
    files = UserFiles(state_dir(service.settings, service.host) / "comfy")
    # ComfyUI's protocol, not ours: documented in docs/comfyui.md, not in /openapi.json.
    api = APIRouter(tags=["comfyui"], include_in_schema=False)
    max_bytes = settings.max_upload_bytes

    async def work(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await pools.work(service, fn, *args, **kwargs)

    for base in BASES:
        _add_routes(api, base, files, work, max_bytes)
    _internal_routes(api)
    return api


def _add_routes(
    api: APIRouter,
    base: str,
    files: UserFiles,
    work: Callable[..., Any],
    max_bytes: int,
) -> None:
    """Register the editor's routes under ``base`` (``/comfy`` or ``/comfy/api``)."""

    @api.get(f"{base}/users", summary="ComfyUI: users")
    async def users() -> dict[str, Any]:
        return {"storage": "server", "migrated": True}

    @api.post(f"{base}/users", summary="ComfyUI: add a user")
    async def add_user() -> str:
        return DEFAULT_USER  # single user: every name is the default user

    @api.get(f"{base}/settings", summary="ComfyUI: settings")
    async def get_settings() -> dict[str, Any]:
        result: dict[str, Any] = await work(files.settings)
        return result

    @api.post(f"{base}/settings", summary="ComfyUI: merge settings")
    async def post_settings(request: Request) -> Response:
        body = await request.body()
        values = _json_body(body, "settings")
        if not isinstance(values, dict):
            raise InputError("settings must be a JSON object of id → value", field="settings")
        await work(files.update_settings, values)
        return _stored_answer(body)

    @api.get(
        f"{base}/settings/{{setting_id:path}}",
        summary="ComfyUI: one setting",
    )
    async def get_setting(setting_id: str) -> Any:
        return await work(files.setting, _setting_id(setting_id))

    @api.post(
        f"{base}/settings/{{setting_id:path}}",
        summary="ComfyUI: store one setting",
    )
    async def post_setting(setting_id: str, request: Request) -> Response:
        key = _setting_id(setting_id)
        body = await request.body()
        value = _json_body(body, f"settings.{key}")
        await work(files.set_setting, key, value)
        return _stored_answer(body)

    @api.get(f"{base}/userdata", summary="ComfyUI: list user files")
    async def list_userdata(request: Request) -> Any:
        directory = request.query_params.get("dir", "")
        if not directory:
            raise InputError("name the folder to list: ?dir=workflows", field="dir")
        return await work(
            files.listing,
            directory,
            recurse=_flag(request, "recurse", False),
            full_info=_flag(request, "full_info", False),
            split=_flag(request, "split", False),
        )

    @api.get(f"{base}/v2/userdata", summary="ComfyUI: user files, v2")
    async def list_userdata_v2(request: Request) -> Any:
        return await work(files.listing_v2, request.query_params.get("path", ""))

    @api.get(
        f"{base}/userdata/{{rest:path}}",
        summary="ComfyUI: a user file (its path URL-encoded as one segment)",
    )
    async def get_userdata(rest: str, request: Request) -> Response:
        rel = _file_of(_userdata_segments(request, base))
        try:
            data: bytes = await work(files.read, rel)
        except FileNotFound:
            default = USERDATA_DEFAULTS.get(rel)
            if default is None:
                raise
            return Response(default[0], media_type=default[1], headers=_STORED_FILE_HEADERS)
        media, headers = _served_type(rel)
        return Response(data, media_type=media, headers=headers)

    @api.post(
        f"{base}/userdata/{{rest:path}}",
        summary="ComfyUI: store a user file, or move one (<file>/move/<dest>)",
    )
    async def post_userdata(rest: str, request: Request) -> Any:
        segments = _userdata_segments(request, base)
        overwrite = _flag(request, "overwrite", True)
        full_info = _flag(request, "full_info", False)
        if len(segments) == 3 and segments[1] == "move":
            source = user_path(segments[0])
            dest = user_path(segments[2], field="dest")
            return await work(files.move, source, dest, overwrite=overwrite, full_info=full_info)
        rel = _file_of(segments)
        data = await request.body()
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"user data file exceeds {max_bytes} bytes", field="file")
        return await work(files.write, rel, data, overwrite=overwrite, full_info=full_info)

    @api.delete(
        f"{base}/userdata/{{rest:path}}",
        summary="ComfyUI: delete a user file",
        status_code=204,
    )
    async def delete_userdata(rest: str, request: Request) -> Response:
        rel = _file_of(_userdata_segments(request, base))
        await work(files.delete, rel)
        return Response(status_code=204)

    for route, answer in EMPTY_ANSWERS.items():
        _add_empty(api, f"{base}{route}", answer)

    @api.get(
        f"{base}/experiment/models/{{folder}}",
        summary="ComfyUI: models of a folder (none: models are the nodes' connections)",
    )
    async def experiment_models(folder: str) -> list[Any]:
        return []

    @api.get(
        f"{base}/global_subgraphs/{{subgraph_id}}",
        summary="ComfyUI: a global subgraph (none here)",
    )
    async def global_subgraph(subgraph_id: str) -> Any:
        raise FileNotFound(f"no global subgraph {subgraph_id[:80]!r}", field="subgraph_id")


def _add_empty(api: APIRouter, path: str, answer: Any) -> None:
    async def empty() -> Any:
        return json.loads(json.dumps(answer))  # a fresh copy per request

    api.add_api_route(
        path,
        empty,
        methods=["GET"],
        summary=f"ComfyUI: {path.rsplit('/', 1)[-1]} (nothing here: an empty answer)",
    )


def _stored_answer(body: bytes) -> Response:
    """The answer to a stored setting: what was stored, as sent (ComfyUI answers an
    empty 200; Chromium reports an empty, untyped answer the editor never reads as an
    aborted request, so it gets a JSON body)."""
    return Response(body, media_type="application/json")


def _setting_id(setting_id: str) -> str:
    if not setting_id or len(setting_id) > MAX_SETTING_ID:
        raise InputError(f"a setting id has 1 to {MAX_SETTING_ID} characters", field="setting_id")
    if any(ord(ch) < 32 for ch in setting_id):
        raise InputError("a setting id holds no control character", field="setting_id")
    return setting_id


# -- static files ------------------------------------------------------------------------------
def _static_router(settings: ServerSettings) -> APIRouter:
    """The editor's files at ``/comfy/`` (a GET catch-all: include it last)."""
    from starlette.staticfiles import StaticFiles

    api = APIRouter(tags=["comfyui"], include_in_schema=False)
    directory = static_dir()
    if directory is not None:
        index_html = (directory / "index.html").read_text(encoding="utf-8")
        page_headers = _page_headers(content_security_policy(index_html))
        static = StaticFiles(directory=directory)
    else:
        page_headers = {}
        static = None

    @api.api_route(PREFIX, methods=["GET", "HEAD"], include_in_schema=False)
    async def editor_root(request: Request) -> Response:
        # The editor takes its API base from its own path minus the last part: at
        # /comfy it would call /api/…, so it must be opened at /comfy/.
        root = str(request.scope.get("root_path", ""))
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{root}{PREFIX}/{query}", status_code=308)

    @api.api_route(f"{PREFIX}/{{path:path}}", methods=["GET", "HEAD"], include_in_schema=False)
    async def editor_file(path: str, request: Request) -> Response:
        if path.startswith(("api/", "internal/")) or path in ("api", "internal", "ws"):
            raise NotFound(f"{request.method} {request.url.path}: not a ComfyUI route here")
        if static is None:
            if path in ("", "index.html"):
                return _not_installed(request)
            raise NotFound(f"{request.method} {request.url.path}: {INSTALL_HINT} first")
        inner = path or "index.html"
        try:
            response = await static.get_response(inner, request.scope)
        except StarletteHTTPException as exc:
            if exc.status_code != 404:
                raise
            answer = _missing_static(inner)
            if answer is None:
                raise NotFound(f"{request.method} {request.url.path}: no such file") from None
            return answer
        response.headers.update(page_headers)
        response.headers["Cache-Control"] = (
            "no-cache" if inner == "index.html" else "public, max-age=0, must-revalidate"
        )
        return response

    if static is not None:
        # The editor points its tab icon at root-absolute paths (/assets/favicon.ico,
        # and a progress frame per tenth while a prompt runs), whatever its own path:
        # those few files, and nothing else of the root, are answered from its package.
        @api.api_route("/assets/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
        async def editor_icon(name: str, request: Request) -> Response:
            if not _ICON_PATH.fullmatch(name):
                raise NotFound(f"{request.method} {request.url.path}: no such file")
            response = await static.get_response(f"assets/{name}", request.scope)
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

    return api


#: The workflow templates index, per locale (``index.json``, ``index.fr.json``).
_TEMPLATE_INDEX = re.compile(r"templates/index(?:\.[A-Za-z_-]{2,16})?\.json")
#: The root-absolute icon files of the editor (under ``/assets/``).
_ICON_PATH = re.compile(r"favicon\.ico|images/favicon_progress_16x16/frame_[0-9]\.png")


def _missing_static(inner: str) -> Response | None:
    """What a file the editor asks for but the package does not ship is answered with:
    ``user.css`` (linked by its page for the user's own styles) is empty, the
    templates index (the ``comfyui-workflow-templates`` package ComfyUI serves at
    ``/templates``) an empty list."""
    if inner == "user.css":
        return Response(b"", media_type="text/css", headers={"Cache-Control": "no-cache"})
    if _TEMPLATE_INDEX.fullmatch(inner):
        return JSONResponse([], headers={"Cache-Control": "no-cache"})
    if inner == "templates/index_logo.json":
        return JSONResponse({}, headers={"Cache-Control": "no-cache"})
    return None


def _not_installed(request: Request) -> Response:
    """``/comfy/`` without the editor: how to install it (HTML for a browser, the coded
    error for anything else)."""
    error = ServiceUnavailable(
        "the ComfyUI editor (comfyui-frontend-package) is not installed",
        field=None,
        solution=f"{INSTALL_HINT}, then restart imagenodes serve",
    )
    if "text/html" in request.headers.get("accept", ""):
        page = (
            "<!doctype html><html lang='en'><meta charset='utf-8'><title>ComfyUI editor "
            "not installed</title><h1>The ComfyUI editor is not installed</h1><p>Install "
            f"it, then restart <code>imagenodes serve</code>:</p><pre>{INSTALL_HINT}</pre>"
            "<p>The ComfyUI API at <code>/comfy/api/</code> works without it.</p></html>"
        )
        return HTMLResponse(
            page,
            status_code=503,
            headers={
                "Content-Security-Policy": "default-src 'none'",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )
    return JSONResponse({"error": error.to_dict()}, status_code=503)


def install_hint() -> str | None:
    """The line ``imagenodes serve`` prints at start when the editor is missing."""
    if static_dir() is not None:
        return None
    return f"the ComfyUI editor at /comfy/ is not installed: {INSTALL_HINT}"


def routers(service: JobService, settings: ServerSettings) -> list[APIRouter]:
    """The editor's API routes, then its static files (last: a GET catch-all)."""
    return [_api_router(service, settings), _static_router(settings)]
