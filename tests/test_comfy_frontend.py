"""The real ComfyUI editor (PyPI ``comfyui-frontend-package``) against ``imagenodes serve``.

Two halves:

* **Over HTTP** (always run): what the editor needs to boot and keep a user's work —
  ``/comfy/api/users``, settings, user data with its path rules, the empty boot
  answers, the static files and their security headers — against the real app on
  uvicorn (port 0), checked as the editor calls them (file names URL-encoded as one
  segment, settings posted without a Content-Type).
* **In a real browser** (``slow``; skipped, saying why, without Debian's chromium or
  the editor package): the editor opens at ``/comfy/`` with no console error and no
  failed request, keeps its settings and saved workflows across reloads, and — once
  ``/comfy/object_info`` lists ``GenerateImageV2`` — builds, runs and saves a
  generate → edit graph through its own UI (the screenshot of docs/comfyui.md).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagenodes import Host
from imagenodes.server import ServerSettings, create_app
from imagenodes.server.protocols.comfy import frontend
from tests.helpers import start_in_thread

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EDITOR = frontend.static_dir()
WAIT_MS = 120_000  # a generate → edit run on a shared 2-core machine
#: A workflow in the editor's own format (an empty graph), as its "Save" writes one.
EMPTY_WORKFLOW = {
    "last_node_id": 0,
    "last_link_id": 0,
    "nodes": [],
    "links": [],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


def enc(name: str) -> str:
    """A user-data path as the editor sends it: one URL-encoded segment."""
    return urllib.parse.quote(name, safe="")


# -- the server -----------------------------------------------------------------------------
class Served:
    def __init__(self, url: str, root: Path, server: Any, thread: threading.Thread) -> None:
        self.url, self.root, self.server, self.thread = url, root, server, thread

    @property
    def comfy_dir(self) -> Path:
        return self.root / "state" / "comfy"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start(root: Path, **options: Any) -> Served:
    import uvicorn

    host = Host(root / "ws")
    settings = ServerSettings(port=0, state_dir=root / "state", **options)
    app = create_app(host, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    port, thread = start_in_thread(server)
    return Served(f"http://127.0.0.1:{port}", root, server, thread)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("comfy-frontend"))
    yield served
    served.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """A server of its own for a test (stopped at teardown)."""
    running: list[Served] = []

    def start_(**options: Any) -> Served:
        running.append(start(tmp_path, **options))
        return running[-1]

    yield start_
    for one in running:
        one.stop()


# -- users, settings and the empty boot answers --------------------------------------------
@pytest.mark.parametrize("base", ["/comfy/api", "/comfy"])
def test_one_user_and_the_empty_boot_answers(served: Served, base: str) -> None:
    with served.client() as c:
        assert c.get(f"{base}/users").json() == {"storage": "server", "migrated": True}
        assert c.post(f"{base}/users", json={"username": "someone"}).json() == "default"
        for route, answer in frontend.EMPTY_ANSWERS.items():
            r = c.get(f"{base}{route}")
            assert (r.status_code, r.json()) == (200, answer), route
        assert c.get(f"{base}/experiment/models/checkpoints").json() == []
        missing = c.get(f"{base}/global_subgraphs/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "FILE_NOT_FOUND"


def test_the_internal_routes_of_its_panels_are_empty(served: Served) -> None:
    with served.client() as c:
        assert c.get("/comfy/internal/logs").json() == ""
        assert c.get("/comfy/internal/logs/raw").json()["entries"] == []
        r = c.patch("/comfy/internal/logs/subscribe", json={"enabled": True, "clientId": "x"})
        assert r.status_code == 200
        assert c.get("/comfy/internal/folder_paths").json() == {}
        assert c.get("/comfy/internal/files/input").json() == []
        assert c.get("/comfy/internal/nope").status_code == 404


def test_settings_are_stored_as_the_editor_posts_them_and_survive_a_restart(
    fresh: Callable[..., Served],
) -> None:
    served = fresh()
    with served.client() as c:
        assert c.get("/comfy/api/settings").json() == frontend.DEFAULT_SETTINGS
        # The editor posts JSON text without a Content-Type (the browser says text/plain).
        r = c.post(
            "/comfy/api/settings/Comfy.LinkRenderMode",
            content=b"2",
            headers={"Content-Type": "text/plain;charset=UTF-8"},
        )
        assert r.status_code == 200 and r.json() == 2
        r = c.post("/comfy/settings", content=json.dumps({"Comfy.Locale": "fr", "x.y": [1]}))
        assert r.status_code == 200
        assert c.get("/comfy/api/settings/Comfy.LinkRenderMode").json() == 2
        assert c.get("/comfy/api/settings/Not.Set").json() is None
        # A user's own value wins over a default; only what was set is written.
        c.post("/comfy/api/settings/Comfy.Notification.ShowVersionUpdates", json=True)
        everything = c.get("/comfy/api/settings").json()
        assert everything["Comfy.Notification.ShowVersionUpdates"] is True
    stored = json.loads((served.comfy_dir / "settings.json").read_text())
    assert stored == {
        "Comfy.LinkRenderMode": 2,
        "Comfy.Locale": "fr",
        "x.y": [1],
        "Comfy.Notification.ShowVersionUpdates": True,
    }
    served.stop()
    again = fresh()
    with again.client() as c:
        assert c.get("/comfy/api/settings").json() == stored


def test_settings_refuse_what_is_not_a_settings_document(served: Served) -> None:
    with served.client() as c:
        for body, code, status in (
            (b"[1, 2]", "INVALID_INPUT", 422),  # /settings takes an object
            (b"{'a': 1}", "INVALID_JSON", 400),  # text/plain is still parsed strictly
            (b"NaN", "INVALID_INPUT", 422),
            (b"[" * 100 + b"]" * 100, "INVALID_JSON", 400),  # deeper than max_json_depth
        ):
            r = c.post("/comfy/api/settings", content=body, headers={"Content-Type": "text/plain"})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), body[:20]
        # Only the settings routes read text/plain as JSON.
        r = c.post("/comfy/api/prompt", content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        long_id = "x" * (frontend.MAX_SETTING_ID + 1)
        r = c.post(f"/comfy/api/settings/{long_id}", json=1)
        assert r.status_code == 422 and r.json()["error"]["field"] == "setting_id"
        # A cross-site page cannot post settings (text/plain is what a form could send).
        r = c.post(
            "/comfy/api/settings",
            content=b"{}",
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"


def test_a_corrupt_settings_file_does_not_stop_the_editor(fresh: Callable[..., Served]) -> None:
    served = fresh()
    served.comfy_dir.mkdir(parents=True, exist_ok=True)
    (served.comfy_dir / "settings.json").write_text("{not json")
    with served.client() as c:
        assert c.get("/comfy/api/settings").json() == frontend.DEFAULT_SETTINGS
        assert c.post("/comfy/api/settings/a", json=1).status_code == 200
        assert c.get("/comfy/api/settings").json()["a"] == 1


# -- user data -------------------------------------------------------------------------------
def test_userdata_round_trip_as_comfyui_answers(fresh: Callable[..., Served]) -> None:
    served = fresh()
    name = "workflows/My flow (1).json"
    body = json.dumps(EMPTY_WORKFLOW).encode()
    with served.client() as c:
        # Nothing saved yet: an empty list, not ComfyUI's 404 (the browser logs a 404).
        listing = "/comfy/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"
        assert c.get(listing).json() == []
        assert c.get("/comfy/api/v2/userdata").json() == []
        r = c.post(f"/comfy/api/userdata/{enc(name)}?overwrite=false&full_info=true", content=body)
        assert r.status_code == 200
        info = r.json()
        assert info["path"] == name and info["size"] == len(body)
        assert isinstance(info["modified"], float) and isinstance(info["created"], float)
        # Stored as sent, under the state dir.
        assert (served.comfy_dir / "userdata" / name).read_bytes() == body
        got = c.get(f"/comfy/api/userdata/{enc(name)}")
        assert got.content == body and got.headers["content-type"] == "application/json"
        assert got.headers["x-content-type-options"] == "nosniff"
        # overwrite=false on an existing file: 409; overwrite (the default) replaces it.
        again = c.post(f"/comfy/api/userdata/{enc(name)}?overwrite=false", content=b"{}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "JOB_CONFLICT"
        assert c.get(f"/comfy/api/userdata/{enc(name)}").content == body
        r = c.post(f"/comfy/userdata/{enc(name)}", content=b"{}")
        assert r.status_code == 200 and r.json() == name  # full_info=false: the path
        # Listings, as the editor asks for them and in ComfyUI's other shapes.
        c.post(f"/comfy/api/userdata/{enc('workflows/sub/b.json')}", content=b"[]")
        full = c.get(listing).json()
        assert [f["path"] for f in full] == ["My flow (1).json", "sub/b.json"]
        assert c.get("/comfy/api/userdata?dir=workflows").json() == ["My flow (1).json"]
        split = c.get("/comfy/api/userdata?dir=workflows&recurse=true&split=true").json()
        assert split == [["My flow (1).json", "My flow (1).json"], ["sub/b.json", "sub", "b.json"]]
        v2 = c.get("/comfy/api/v2/userdata", params={"path": "workflows"}).json()
        assert [(e["type"], e["path"]) for e in v2] == [
            ("directory", "workflows/sub"),  # folders first, then files by name
            ("file", "workflows/sub/b.json"),
            ("file", "workflows/My flow (1).json"),
        ]
        # Move: 409 onto an existing name without overwrite; else renamed.
        target = "workflows/renamed.json"
        move = f"/comfy/api/userdata/{enc(name)}/move/{enc('workflows/sub/b.json')}"
        assert c.post(f"{move}?overwrite=false").status_code == 409
        r = c.post(f"/comfy/api/userdata/{enc(name)}/move/{enc(target)}?full_info=true")
        assert r.status_code == 200 and r.json()["path"] == target
        assert c.get(f"/comfy/api/userdata/{enc(name)}").status_code == 404
        # Delete: 204, then 404.
        assert c.delete(f"/comfy/api/userdata/{enc(target)}").status_code == 204
        gone = c.delete(f"/comfy/api/userdata/{enc(target)}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "FILE_NOT_FOUND"


def test_files_the_editor_reads_at_every_boot_have_an_empty_default(served: Served) -> None:
    with served.client() as c:
        css = c.get("/comfy/api/userdata/user.css")
        assert css.status_code == 200 and css.text == ""
        assert css.headers["content-type"].startswith("text/css")
        assert c.get(f"/comfy/api/userdata/{enc('comfy.templates.json')}").json() == []
        assert c.get("/comfy/api/userdata/other.json").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "../escape.json",
        "workflows/../../escape.json",
        "/etc/passwd",
        "workflows//a.json",
        "workflows/./a.json",
        "workflows\\a.json",
        "C:\\x.json",
        "a\x00b.json",
        "a\nb.json",
        "workflows/a?.json",
        "x" * 300 + ".json",
        "/".join(["d"] * 9) + "/a.json",
        ".imagenodes-tmp",
        "",
    ],
)
def test_userdata_paths_are_as_strict_as_v1_files(served: Served, name: str) -> None:
    with served.client() as c:
        for method in ("GET", "POST", "DELETE"):
            r = c.request(method, f"/comfy/api/userdata/{enc(name)}", content=b"{}")
            assert r.status_code in (404, 422), (method, name, r.status_code)
            if r.status_code == 422:
                assert r.json()["error"]["code"] == "INVALID_INPUT"
                assert r.json()["error"]["field"] == "file"
        listing = c.get("/comfy/api/userdata", params={"dir": name})
        assert listing.status_code == 422, name
    assert not (served.root / "escape.json").exists()
    assert not (served.root / "state" / "escape.json").exists()


def test_userdata_follows_no_symlink_and_bounds_its_bodies(fresh: Callable[..., Served]) -> None:
    served = fresh(max_upload_bytes=4096)
    userdata = served.comfy_dir / "userdata"
    (userdata / "workflows").mkdir(parents=True)
    outside = served.root / "secret.json"
    outside.write_text('{"secret": 1}')
    (userdata / "workflows" / "link.json").symlink_to(outside)
    (userdata / "linked-dir").symlink_to(served.root)
    with served.client() as c:
        for name in ("workflows/link.json", "linked-dir/secret.json"):
            r = c.get(f"/comfy/api/userdata/{enc(name)}")
            assert r.status_code == 404 and '"secret": 1' not in r.text
            r = c.post(f"/comfy/api/userdata/{enc(name)}", content=b"{}")
            assert r.status_code in (404, 422)
            assert c.delete(f"/comfy/api/userdata/{enc(name)}").status_code == 404
        listing = c.get("/comfy/api/userdata?dir=workflows&recurse=true&full_info=true").json()
        assert listing == []  # the link is not listed
        assert c.get("/comfy/api/userdata", params={"dir": "linked-dir"}).status_code == 404
        assert all("secret" not in e["path"] for e in c.get("/comfy/api/v2/userdata").json())
        # Larger than max_upload_bytes: 413 before it is stored.
        big = c.post(f"/comfy/api/userdata/{enc('workflows/big.json')}", content=b"x" * 5000)
        assert big.status_code == 413 and big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert not (userdata / "workflows" / "big.json").exists()
    assert outside.read_text() == '{"secret": 1}'


def test_a_stored_file_cannot_run_as_a_page(served: Served) -> None:
    """User data is served from the editor's own origin: never as HTML or script."""
    with served.client() as c:
        c.post(f"/comfy/api/userdata/{enc('x.html')}", content=b"<script>alert(1)</script>")
        r = c.get(f"/comfy/api/userdata/{enc('x.html')}")
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"] == "attachment"
        assert "sandbox" in r.headers["content-security-policy"]


# -- the editor's files --------------------------------------------------------------------------
needs_editor = pytest.mark.skipif(
    EDITOR is None, reason=f"comfyui-frontend-package is not installed ({frontend.INSTALL_HINT})"
)


@needs_editor
def test_the_editor_is_served_at_comfy_with_its_security_headers(served: Served) -> None:
    with served.client() as c:
        r = c.get("/comfy")
        assert r.status_code == 308 and r.headers["location"] == "/comfy/"
        page = c.get("/comfy/")
        assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]
        assert "'sha256-" in csp  # its inline splash script, allowed by hash only
        assert page.headers["x-content-type-options"] == "nosniff"
        assert c.get("/comfy/materialdesignicons.min.css").status_code == 200
        assert c.get("/comfy/user.css").text == ""
        assert c.get("/comfy/templates/index.json").json() == []
        assert c.get("/assets/favicon.ico").status_code == 200  # root-absolute in the editor
        for bad in (
            "/comfy/../pyproject.toml",
            "/comfy/%2e%2e/%2e%2e/pyproject.toml",
            "/comfy/nope.js",
            "/comfy/api/nope",
            "/assets/index.html",
        ):
            r = c.get(bad)
            assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", bad
        # The catch-all answers GET only: an API route's other methods are not masked.
        assert c.post("/comfy/nope", json={}).status_code in (404, 405)


def test_token_origin_and_host_rules_apply_to_comfy_as_to_v1(fresh: Callable[..., Served]) -> None:
    served = fresh(token="comfy-test-token")
    with served.client() as c:
        for path in ("/comfy/", "/comfy/api/settings", "/comfy/api/userdata?dir=workflows"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", path
        auth = {"Authorization": "Bearer comfy-test-token"}
        assert c.get("/comfy/api/users", headers=auth).status_code == 200
        r = c.post(
            f"/comfy/api/userdata/{enc('workflows/a.json')}",
            content=b"{}",
            headers={**auth, "Origin": "http://evil.example"},
        )
        assert r.status_code == 403
    served.stop()
    local = fresh()
    with local.client() as c:  # without a token, only a trusted Host name is answered
        r = c.get("/comfy/api/settings", headers={"Host": "rebind.example"})
        assert r.status_code == 421 and r.json()["error"]["code"] == "UNTRUSTED_HOST"


def test_without_the_editor_comfy_says_how_to_install_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontend, "static_dir", lambda: None)
    import fastapi

    app = fastapi.FastAPI()
    for router in frontend.routers(_FakeService(served.root / "state"), ServerSettings()):
        app.include_router(router)
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        r = c.get("/comfy/", headers={"Accept": "text/html"})
        assert r.status_code == 503 and frontend.INSTALL_HINT in r.text
        assert r.headers["content-security-policy"] == "default-src 'none'"
        r = c.get("/comfy/")
        assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert frontend.INSTALL_HINT in r.json()["error"]["solution"]
    assert frontend.install_hint() is not None


class _FakeService:
    """What the frontend's routers take of a JobService (its settings and host)."""

    def __init__(self, state: Path) -> None:
        self.settings = ServerSettings(state_dir=state)
        self.host = None


# -- in a real browser ---------------------------------------------------------------------------
def _browser_skip() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    if CHROMIUM is None:
        return (
            "Debian's chromium is not installed (apt-get install -y chromium); "
            "`playwright install` cannot download browsers here"
        )
    if EDITOR is None:
        return f"comfyui-frontend-package is not installed ({frontend.INSTALL_HINT})"
    return None


#: The browser tests: slow, and skipped (saying why) without chromium or the editor.
needs_browser = pytest.mark.skipif(_browser_skip() is not None, reason=_browser_skip() or "")


class Watched:
    """A page and everything that went wrong on it: console errors, page errors,
    failed requests and 4xx/5xx answers."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        self.api_calls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            where = (message.location or {}).get("url", "")
            self.problems.append(f"console error: {message.text} ({where})")

    def _failed(self, request: Any) -> None:
        # A response the server sent in full but the page never read (the editor does
        # not read what a settings POST answers) is cut off by Chromium when the page
        # reloads or closes: ERR_ABORTED after a successful status is not a failure.
        answered = request.response()
        if request.failure == "net::ERR_ABORTED" and answered and answered.status < 400:
            return
        self.problems.append(f"failed: {request.method} {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        path = urllib.parse.urlsplit(response.url).path
        if "/comfy/api/" in path:
            self.api_calls.append(f"{response.request.method} {path}")
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.request.method} {response.url}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def editor(browser: Any) -> Iterator[Callable[[Served], Watched]]:
    """Open the editor in a fresh browser context (empty storage); at teardown, fail on
    anything that went wrong on the page."""
    opened: list[tuple[Any, Watched]] = []

    def open_(served: Served) -> Watched:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        watched = Watched(page)
        opened.append((context, watched))
        page.goto(f"{served.url}/comfy/")
        booted(page)
        return watched

    yield open_
    problems = [p for _, watched in opened for p in watched.problems]
    for context, _ in opened:
        context.close()
    assert problems == [], "the editor reported problems:\n" + "\n".join(problems)


def booted(page: Any) -> None:
    """Wait until the editor has booted: its app object has a graph, the splash is
    gone, and the network is idle."""
    page.wait_for_function(
        "() => window.app && window.app.graph && window.app.canvas", timeout=60_000
    )
    page.locator("#splash-loader").wait_for(state="detached", timeout=60_000)
    page.wait_for_load_state("networkidle")


def reload(page: Any) -> None:
    page.reload()
    booted(page)


@pytest.mark.slow
@needs_browser
def test_the_editor_boots_with_no_error_and_no_failed_request(
    served: Served, editor: Callable[[Served], Watched]
) -> None:
    watched = editor(served)
    # It booted against this server, as a single user keeping its data on the server.
    for call in ("GET /comfy/api/users", "GET /comfy/api/settings", "GET /comfy/api/object_info"):
        assert call in watched.api_calls, (call, watched.api_calls)
    assert watched.page.evaluate("() => window.app.api.api_base") == "/comfy"
    # Nothing left the machine: the page connected to this server only.
    assert all(
        url.startswith(served.url) or url.startswith(("blob:", "data:"))
        for url in watched.page.evaluate("() => performance.getEntries().map(e => e.name)")
        if url.startswith(("http", "blob", "data"))
    )


@pytest.mark.slow
@needs_browser
def test_its_panels_and_dialogs_open_without_error(
    served: Served, editor: Callable[[Served], Watched]
) -> None:
    """Each sidebar tab, the settings dialog and the bottom panel (the log terminal)
    call routes of their own; none of them may fail."""
    page = editor(served).page
    for name in (
        "Node Library",
        "Model Library",
        "Workflows",
        "Assets",
        "Templates",
        "Toggle Bottom Panel",
        "Keyboard Shortcuts",
    ):
        page.get_by_role("button", name=name, exact=False).first.click()
        page.wait_for_load_state("networkidle")
        page.keyboard.press("Escape")
    page.keyboard.press("Control+,")
    page.get_by_role("dialog").first.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    page.keyboard.press("Escape")


@pytest.mark.slow
@needs_browser
def test_settings_persist_across_a_reload(
    fresh: Callable[..., Served], editor: Callable[[Served], Watched]
) -> None:
    served = fresh()
    watched = editor(served)
    page = watched.page
    # Through the editor's own settings store, which saves each change to the server.
    page.evaluate(
        "async () => { await window.app.extensionManager.setting.set('Comfy.LinkRenderMode', 1) }"
    )
    page.wait_for_load_state("networkidle")
    stored = json.loads((served.comfy_dir / "settings.json").read_text())
    assert stored["Comfy.LinkRenderMode"] == 1
    reload(page)
    value = page.evaluate("() => window.app.extensionManager.setting.get('Comfy.LinkRenderMode')")
    assert value == 1
    # And a fresh browser (no local storage at all) gets it from the server too.
    other = editor(served)
    value = other.page.evaluate(
        "() => window.app.extensionManager.setting.get('Comfy.LinkRenderMode')"
    )
    assert value == 1


@pytest.mark.slow
@needs_browser
def test_a_workflow_saved_through_the_api_shows_in_the_editors_workflow_list(
    fresh: Callable[..., Served], editor: Callable[[Served], Watched]
) -> None:
    served = fresh()
    watched = editor(served)
    page = watched.page
    with served.client() as c:
        name = "workflows/Saved by the API.json"
        r = c.post(f"/comfy/api/userdata/{enc(name)}", content=json.dumps(EMPTY_WORKFLOW))
        assert r.status_code == 200
    reload(page)
    open_workflows_sidebar(page)
    entry = page.get_by_text("Saved by the API", exact=True)
    entry.first.wait_for(state="visible")
    entry.first.click()  # opens it: a tab of that name
    page.wait_for_load_state("networkidle")
    assert (
        page.evaluate("() => window.app.extensionManager.workflow.activeWorkflow.path")
        == "workflows/Saved by the API.json"
    )


def open_workflows_sidebar(page: Any) -> None:
    """The workflows sidebar tab (its button is named "Workflows"; "w" toggles it)."""
    button = page.get_by_role("button", name="Workflows", exact=False).first
    if button.count():
        button.click()
    else:
        page.keyboard.press("w")


# -- the whole flow, through the editor's own UI ---------------------------------------------
def _has_generate_image_v2(served: Served) -> bool:
    with served.client() as c:
        r = c.get("/comfy/api/object_info")
    return r.status_code == 200 and "GenerateImageV2" in r.json()


def add_from_library(page: Any, title: str, x: float, y: float) -> None:
    """Find ``title`` in the Node Library sidebar and drop it on the canvas at (x, y)."""
    search = page.get_by_placeholder("Search Nodes")
    if not search.is_visible():
        page.get_by_role("button", name="Node Library", exact=False).first.click()
    search.fill(title)
    page.get_by_text(title, exact=True).first.click()  # the node follows the pointer…
    page.mouse.move(x, y, steps=4)
    page.mouse.click(x, y)  # …until it is placed


def node(page: Any, node_id: int) -> Any:
    return page.locator(f'[data-node-id="{node_id}"]')


def set_number(widget: Any, value: int) -> None:
    field = widget.locator('input[role="spinbutton"]')
    field.fill(str(value))
    field.press("Enter")


def drag(page: Any, source: Any, target: Any) -> None:
    a, b = source.bounding_box(), target.bounding_box()
    assert a and b
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=10)
    page.mouse.up()


@pytest.mark.slow
@needs_browser
def test_build_run_and_save_a_generate_then_edit_graph_in_the_editor(
    fresh: Callable[..., Served], editor: Callable[[Served], Watched], tmp_path: Path
) -> None:
    served = fresh()
    if not _has_generate_image_v2(served):
        pytest.skip("/comfy/api/object_info does not list GenerateImageV2 (the v1 routes)")
    with served.client() as c:  # DOM widgets ("modern node design"), no first-run dialog
        c.post(
            "/comfy/api/settings",
            json={"Comfy.VueNodes.Enabled": True, "Comfy.TutorialCompleted": True},
        )
    page = editor(served).page
    page.evaluate("() => window.app.graph.clear()")

    # Find both nodes in the node library and drop them on the canvas.
    add_from_library(page, "Generate Image V2", 520, 250)
    add_from_library(page, "Image to Image", 1000, 250)
    page.get_by_role("button", name="Node Library", exact=False).first.click()  # close it
    types = page.evaluate("() => window.app.graph._nodes.map(n => [String(n.id), n.type])")
    assert types == [["1", "GenerateImageV2"], ["2", "ImageToImage"]]

    # Prompt, steps and aspect ratio of the generator; the edit's prompt and steps.
    generate, edit = node(page, 1), node(page, 2)
    prompt = "a red circle on a blue background"
    generate.locator('[data-widget-name="prompt"] textarea').fill(prompt)
    set_number(generate.locator('[data-widget-name="steps"]'), 2)
    generate.locator('[data-widget-name="aspect_ratio"]').click()
    page.get_by_role("option", name="1:1", exact=True).click()
    edit.locator('[data-widget-name="prompt"] textarea').fill("a green circle on a blue background")
    set_number(edit.locator('[data-widget-name="steps"]'), 2)
    # Wire the generated image into the edit's source image.
    drag(page, page.locator('[data-slot-key="1-out-0"]'), page.locator('[data-slot-key="2-in-0"]'))
    links = page.evaluate(
        "() => [...window.app.graph.links.values()]"
        ".map(l => [String(l.origin_id), String(l.target_id), l.type])"
    )
    assert links == [["1", "2", "IMAGE"]]
    values = page.evaluate(
        "() => Object.fromEntries(window.app.graph._nodes[0].widgets.map(w => [w.name, w.value]))"
    )
    assert (values["prompt"], values["steps"], values["aspect_ratio"]) == (prompt, 2, "1:1")

    # Queue it, and watch what the editor hears: progress of each node, then its images.
    page.evaluate(
        """() => { window.__heard = [];
            for (const type of ['execution_start', 'executing', 'progress', 'executed',
                                'execution_success', 'execution_error'])
                window.app.api.addEventListener(type, e => window.__heard.push([type, e.detail]))
        }"""
    )
    page.get_by_role("button", name="Run", exact=True).first.click()
    page.wait_for_function(
        "() => window.__heard.some(([t]) => t === 'execution_success' || t === 'execution_error')",
        timeout=WAIT_MS,
    )
    heard = page.evaluate("() => window.__heard")
    kinds = [kind for kind, _ in heard]
    assert "execution_error" not in kinds, heard
    progress = [detail for kind, detail in heard if kind == "progress"]
    for node_id in ("1", "2"):
        steps = [p for p in progress if str(p["node"]) == node_id]
        # To the end of each node's sampler steps (the edit runs strength × steps of them).
        assert steps and steps[-1]["value"] == steps[-1]["max"] >= 1, (node_id, progress)
    executed = {str(d["node"]): d["output"]["images"] for k, d in heard if k == "executed"}
    assert set(executed) == {"1", "2"} and all(len(images) == 1 for images in executed.values())
    # Both output images are shown on their nodes, decoded from /comfy/api/view.
    for node_id in (1, 2):
        image = node(page, node_id).locator("img").first
        image.wait_for(state="visible")
        assert "/comfy/api/view?" in (image.get_attribute("src") or "")
        size = image.evaluate(
            "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])"
        )
        assert size[0] > 0 and size[0] == size[1]  # 1:1
    page.locator("#graph-canvas").click(position={"x": 700, "y": 120})  # nothing selected
    page.keyboard.press(".")  # fit the view to both nodes
    page.get_by_text("Job queued").wait_for(state="hidden")  # its toast
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "comfyui.png"))  # docs/img/comfyui.png is this one

    # Save it (Ctrl+S asks for a name), then reload: it is in the workflow list.
    page.keyboard.press("Control+s")
    dialog = page.get_by_role("dialog", name="Save workflow")
    dialog.locator("input").fill("Generate and edit")
    dialog.locator("input").press("Enter")
    saved = served.comfy_dir / "userdata" / "workflows" / "Generate and edit.json"
    deadline = time.monotonic() + 10
    while not saved.exists():
        assert time.monotonic() < deadline, "the workflow was not saved"
        time.sleep(0.1)
    workflow = json.loads(saved.read_text())
    assert sorted(n["type"] for n in workflow["nodes"]) == ["GenerateImageV2", "ImageToImage"]
    reload(page)
    open_workflows_sidebar(page)
    page.get_by_text("Generate and edit", exact=True).first.wait_for(state="visible")
