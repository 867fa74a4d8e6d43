"""The builder page (``GET /``) in a real browser: Debian's chromium driven by Playwright.

One server (the app on uvicorn in a thread, embedded model, a real workspace) serves
every test of the module; each test gets a fresh browser context (empty localStorage
and sessionStorage) and fails on any ``console.error`` or uncaught page error.  The
page is driven through its accessible names only (buttons, labels, roles), which is
also the contract for screen-reader and keyboard users (docs/builder.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from imagenodes import Host, Node, NodeInput, NodeOutput, RunContext, hookimpl
from imagenodes.sdk import ConnectionRequirement
from tests.helpers import start_in_thread

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium); "
        "`playwright install` cannot download browsers here",
        allow_module_level=True,
    )

Page = sync_api.Page
expect = sync_api.expect
REPO = Path(__file__).resolve().parents[1]
TOKEN = "builder-test-token-6f1c"
WAIT_MS = 90_000  # bounded waits for a run on a shared 2-core machine


# -- a third-party pack with a node that cannot run here ------------------------------------
class CloudInput(NodeInput):
    """Cloud upscale input."""

    factor: int = Field(default=2, ge=2, le=4, title="Factor", description="Upscale factor.")


class CloudOutput(NodeOutput):
    """Cloud upscale output."""

    done: bool = Field(default=True, title="Done")


class CloudUpscale(Node[CloudInput, CloudOutput]):
    """Needs a connection category nobody configured: listed, but unavailable."""

    id = "cloud_upscale"
    version = "0.1.0"
    title = "Cloud Upscale"
    description = "Upscales on a cloud service."
    category = "utility"
    connections: ClassVar[tuple[ConnectionRequirement, ...]] = (
        ConnectionRequirement("Cloud", "The cloud service.", "cloud-upscaler"),
    )

    def run(self, inputs: CloudInput, ctx: RunContext) -> CloudOutput:
        return CloudOutput()


class CloudPack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(CloudUpscale)


# -- the server -----------------------------------------------------------------------------
class Served:
    def __init__(self, url: str, host: Host, server: Any, thread: threading.Thread) -> None:
        self.url, self.host, self.server, self.thread = url, host, server, thread

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def _start(root: Path, **options: Any) -> Served:
    import uvicorn

    from imagenodes.server import ServerSettings, create_app

    host = Host(root / "ws", plugins=[CloudPack()])
    settings = ServerSettings(port=0, state_dir=root / "state", **options)
    server = uvicorn.Server(
        uvicorn.Config(create_app(host, settings), host="127.0.0.1", port=0, log_level="warning")
    )
    port, thread = start_in_thread(server)
    return Served(f"http://127.0.0.1:{port}", host, server, thread)


def _stop(served: Served) -> None:
    served.server.should_exit = True
    served.thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = _start(tmp_path_factory.mktemp("builder"))
    yield served
    _stop(served)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Page]]:
    """A fresh context per test; fails the test on any console error or page error."""
    errors: list[str] = []
    contexts: list[Any] = []

    def open_(url: str, before: Callable[[Page], None] | None = None) -> Page:
        context = browser.new_context(
            viewport={"width": 1280, "height": 1400}, accept_downloads=True
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("console", lambda m: errors.append(m.text) if _an_error(m) else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        if before is not None:
            before(page)
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], f"the page logged errors: {errors}"


def _an_error(message: Any) -> bool:
    """A console error, except the browser's own network line for an API answer the page
    handles and shows: a 422 (a coded input error) from /v1/ — the JS logs nothing."""
    if message.type != "error":
        return False
    handled = "status of 422" in message.text and "/v1/" in (message.location or {}).get("url", "")
    return not (message.text.startswith("Failed to load resource") and handled)


# -- helpers --------------------------------------------------------------------------------
def node(page: Page, label: str) -> Any:
    """A node on the canvas: a group named by its label."""
    return page.get_by_role("group", name=label, exact=True)


def add(page: Page, title: str, label: str | None = None, **fields: str) -> Any:
    page.get_by_role("button", name=title, exact=True).click()
    group = node(page, label or title)
    for field_title, value in fields.items():
        group.get_by_label(field_title.replace("_", " "), exact=True).fill(value)
    return group


def connect(page: Page, source: str, target: str) -> None:
    """Drag a wire from the source node's image output to the target's image input."""
    out = page.locator(f'[data-label="{source}"] .baklava-node-interface.--output .__port').first
    into = page.locator(f'[data-label="{target}"] .baklava-node-interface.--input .__port').first
    a, b = out.bounding_box(), into.bounding_box()
    assert a and b
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=8)
    page.mouse.up()


def finished(group: Any) -> None:
    bar = group.get_by_role("progressbar")
    expect(bar).not_to_have_attribute("aria-valuenow", "0", timeout=WAIT_MS)
    total = bar.get_attribute("aria-valuemax")
    expect(bar).to_have_attribute("aria-valuenow", total, timeout=WAIT_MS)


def natural_size(image: Any) -> tuple[int, int]:
    image.evaluate("img => img.decode()")  # rejects when the bytes do not decode
    return tuple(image.evaluate("img => [img.naturalWidth, img.naturalHeight]"))


def newest_jobs(served: Served, n: int) -> list[dict[str, Any]]:
    with served.client() as c:
        return c.get("/v1/jobs", params={"limit": n}).json()["jobs"]


def step_images(job: dict[str, Any], step: str) -> list[str]:
    return job["outputs"]["results"][step]["images"]


def read_png(served: Served, ref: str) -> Image.Image:
    data = served.host.workspace.read_bytes(ref)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.convert("RGB")


# -- the page and its routes ------------------------------------------------------------------
def test_root_is_the_page_and_v1_stays_discovery(served: Served) -> None:
    with served.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/v1").json()["links"]["nodes"] == "/v1/nodes"
        js = c.get("/web/vendor/baklavajs-2.8.1/bundle.js")
        assert js.status_code == 200 and "BaklavaJS" in js.text[:200]
        assert c.get("/web/vendor/baklavajs-2.8.1/LICENSE").text.startswith("MIT License")
        assert c.get("/web/config.json").json() == {"token_required": False}
        for bad in ("/web/../server/app.py", "/web/%2e%2e/server/app.py", "/web/nope.js"):
            r = c.get(bad)
            assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


def test_the_vendored_library_is_the_published_one() -> None:
    """bundle.js, classic.css and LICENSE are byte for byte the npm packages' (SOURCE.md)."""
    import hashlib

    vendor = REPO / "src/imagenodes/web/vendor/baklavajs-2.8.1"
    table = dict(
        re.findall(
            r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", (vendor / "SOURCE.md").read_text(), re.M
        )
    )
    assert set(table) == {"bundle.js", "classic.css", "LICENSE"}
    for name, digest in table.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert "web/vendor/baklavajs-2.8.1/bundle.js" in (vendor.parents[1] / "index.html").read_text()


def test_palette_lists_every_node_by_category_unavailable_greyed(
    served: Served, open_page: Callable[[str], Page]
) -> None:
    page = open_page(served.url)
    with served.client() as c:
        catalog = c.get("/v1/nodes").json()["nodes"]
    for entry in catalog:
        section = page.get_by_role("region", name=entry["category"], exact=True)
        button = section.get_by_role("button", name=entry["title"], exact=True)
        expect(button).to_be_visible()
        disabled = "true" if not entry["availability"]["available"] else None
        assert button.get_attribute("aria-disabled") == disabled
    cloud = page.get_by_role("button", name="Cloud Upscale", exact=True)
    expect(cloud).to_have_accessible_description(
        "Unavailable: "
        + next(e["availability"]["reason"] for e in catalog if e["id"] == "cloud_upscale")
    )
    expect(cloud).to_be_disabled()  # greyed (aria-disabled: still focusable, says why)
    cloud.focus()
    page.keyboard.press("Enter")
    expect(node(page, "Cloud Upscale")).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text("Unavailable")
    # A pack's node gets its form from its schema alone: the checkerboard's limits.
    add(page, "Checkerboard")
    size = node(page, "Checkerboard").get_by_label("Size", exact=True)
    assert (size.get_attribute("min"), size.get_attribute("max"), size.input_value()) == (
        "8",
        "1024",
        "64",
    )
    expect(size).to_have_accessible_description("Side in pixels.")


def test_form_from_the_schema(served: Served, open_page: Callable[[str], Page]) -> None:
    page = open_page(served.url)
    gen = add(page, "Generate Image V2")
    prompt = gen.get_by_label("Prompt", exact=True)
    assert prompt.evaluate("e => e.tagName") == "TEXTAREA"  # prompts are multi-line
    steps = gen.get_by_label("Steps", exact=True)
    assert (steps.get_attribute("type"), steps.get_attribute("min")) == ("number", "1")
    assert (steps.get_attribute("max"), steps.input_value()) == ("50", "20")  # defaults
    aspect = gen.get_by_label("Aspect ratio", exact=True)
    assert aspect.evaluate("e => e.tagName") == "SELECT" and aspect.input_value() == "9:16_HD"
    assert "1:1" in aspect.evaluate("e => [...e.options].map(o => o.value)")
    seed = gen.get_by_label("Seed", exact=True)  # nullable: optional, empty
    assert seed.input_value() == "" and seed.get_attribute("required") is None
    expect(seed).to_have_accessible_description(
        "The seed to use for the generated image. (optional)"
    )
    expect(prompt).to_have_attribute("required", "")
    gen_v1 = add(page, "Image Generation")
    assert gen_v1.get_by_label("Reuse identical results", exact=True).is_checked()  # boolean
    # An image input is a socket; unconnected it takes a reference or an upload.
    i2i = add(page, "Image to Image")
    expect(i2i.get_by_label("Upload Source Image", exact=True)).to_be_attached()
    connect(page, "Generate Image V2", "Image to Image")
    expect(i2i.get_by_label("Source Image", exact=True)).to_have_count(0)  # fed by the wire
    # Wiring by keyboard: the input's "wire from" select lists the other nodes' outputs.
    edit = add(page, "Image to Image", "Image to Image 2")
    wire = edit.get_by_label("Wire Source Image from", exact=True)
    wire.focus()
    wire.select_option(label="Generate Image V2 · Image output")
    expect(edit.get_by_label("Source Image", exact=True)).to_have_count(0)
    expect(edit.get_by_label("Prompt", exact=True)).to_be_focused()
    with page.expect_download() as download:
        page.get_by_role("button", name="Save flow").click()
    flow = json.loads(Path(download.value.path()).read_text())
    assert flow["steps"][0]["id"] == "generate_image_v2_1"
    wired = {
        s["id"]: s["parameters"]["source_image"]
        for s in flow["steps"]
        if s["type"] == "image_to_image"
    }
    assert wired == dict.fromkeys(
        ["image_to_image_1", "image_to_image_2"], "$.results.generate_image_v2_1.images.0"
    )
    # Removing a wire by keyboard: the wired node's "Remove wire into" button.
    unwire = edit.get_by_role("button", name="Remove wire into Source Image of Image to Image 2")
    unwire.focus()
    page.keyboard.press("Enter")
    expect(unwire).to_have_count(0)
    expect(edit.get_by_label("Upload Source Image", exact=True)).to_be_attached()  # back
    expect(edit.get_by_label("Wire Source Image from", exact=True)).to_be_focused()
    i2i.get_by_role("button", name="Delete Image to Image").click()
    expect(node(page, "Image to Image")).to_have_count(0)


def test_build_run_watch_and_save_a_flow_that_runs_unchanged(
    served: Served, open_page: Callable[[str], Page], tmp_path: Path
) -> None:
    page = open_page(served.url)
    gen = add(
        page, "Generate Image V2", Prompt="a red circle on a blue background", Steps="2", Seed="7"
    )
    i2i = add(page, "Image to Image", Prompt="a blue circle", Steps="2", Seed="8")
    connect(page, "Generate Image V2", "Image to Image")
    i2i.get_by_label("Strength", exact=True).fill("0.5")
    page.screenshot(path=str(tmp_path / "builder-before.png"))

    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_enabled()
    for group in (gen, i2i):
        finished(group)
    expect(page.get_by_role("status")).to_have_text("Done.", timeout=WAIT_MS)

    # Thumbnails: alt text names node and index; they decode at the size the run made
    # (read back from the workspace as PNGs: the engine decides the size, e.g. 9:16_HD on
    # the embedded model, and says how in a notice).
    (job,) = newest_jobs(served, 1)
    assert job["kind"] == "flow" and job["status"] == "succeeded"
    page_images = {
        step: read_png(served, step_images(job, step)[0])
        for step in ("generate_image_v2_1", "image_to_image_1")
    }
    sizes = {im.size for im in page_images.values()}
    assert len(sizes) == 1 and (size := sizes.pop())[0] * 16 == size[1] * 9  # 9:16
    for group, label in ((gen, "Generate Image V2"), (i2i, "Image to Image")):
        thumb = group.get_by_role("img", name=f"{label} image 1", exact=True)
        assert natural_size(thumb) == size
    # Notices: each step's, as "CODE requested → applied, reason".
    notices = {step["id"]: step["notices"] for step in job["outputs"]["steps"]}
    size_notice = next(n for n in notices["generate_image_v2_1"] if n["field"] == "aspect_ratio")
    assert size_notice["code"] in ("SIZE_CAPPED", "SIZE_UPSCALED")
    expect(gen.get_by_role("list", name="Notices of Generate Image V2")).to_contain_text(
        f"{size_notice['code']} {size_notice['requested']} → {size_notice['applied']}"
    )
    page.screenshot(path=str(tmp_path / "builder.png"))  # docs/img/builder.png is this one
    # Click → full size.
    gen.get_by_role("img", name="Generate Image V2 image 1").click()
    full = page.get_by_role("img", name="Generate Image V2 image 1, full size")
    expect(full).to_be_visible()
    page.get_by_role("button", name="Close").click()
    page.screenshot(path=str(tmp_path / "builder-after.png"), full_page=True)

    # Save: a seed-003 flow, steps in dependency order, the wire as a reference.
    with page.expect_download() as download:
        page.get_by_role("button", name="Save flow").click()
    saved = tmp_path / "flow.json"
    download.value.save_as(saved)
    flow = json.loads(saved.read_text())
    assert [s["id"] for s in flow["steps"]] == ["generate_image_v2_1", "image_to_image_1"]
    assert (
        flow["steps"][1]["parameters"]["source_image"] == "$.results.generate_image_v2_1.images.0"
    )
    assert flow["steps"][1]["parameters"]["strength"] == 0.5
    assert flow["ui"]["results"]["widgets"] == [
        {"type": "Images", "sources": ["generate_image_v2_1", "image_to_image_1"]}
    ]
    # ... which `imagenodes flow run` runs unchanged, with the same images.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = Path(sys.executable).with_name("imagenodes")  # the installed command
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "imagenodes.cli"]
    out = subprocess.run(
        [*cli, "--workspace", str(tmp_path / "cli-ws"), "flow", "run", str(saved), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    for step, image in page_images.items():
        with Image.open(Path(result["results"][step]["images"][0].removeprefix("file://"))) as im:
            again = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert np.abs(again - np.asarray(image, dtype=np.int16)).max() <= 2, step

    # The graph is also kept in localStorage: a reload brings it back, wire included.
    page.reload()
    expect(node(page, "Image to Image").get_by_label("Prompt", exact=True)).to_have_value(
        "a blue circle"
    )
    expect(node(page, "Image to Image").get_by_label("Source Image", exact=True)).to_have_count(0)
    # And the file loads back into an empty canvas.
    page.get_by_role("button", name="Clear").click()
    expect(node(page, "Generate Image V2")).to_have_count(0)
    page.get_by_label("Load flow").set_input_files(str(saved))
    expect(node(page, "Generate Image V2").get_by_label("Seed", exact=True)).to_have_value("7")


def test_flow_inputs_are_marked_and_saved(served: Served, open_page: Callable[[str], Page]) -> None:
    page = open_page(served.url)
    gen = add(page, "Generate Image V2", Prompt="a green square")
    gen.get_by_label("Expose Prompt as a flow input", exact=True).check()
    with page.expect_download() as download:
        page.get_by_role("button", name="Save flow").click()
    before = json.loads(Path(download.value.path()).read_text())["ui"]["builder"]["positions"]
    # Move the node by its title bar; the saved layout follows.
    title = page.locator('[data-label="Generate Image V2"] .__title')
    box = title.bounding_box()
    assert box
    page.mouse.move(box["x"] + 40, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 240, box["y"] + box["height"] / 2 + 60, steps=10)
    page.mouse.up()
    with page.expect_download() as download:
        page.get_by_role("button", name="Save flow").click()
    flow = json.loads(Path(download.value.path()).read_text())
    moved = flow["ui"]["builder"]["positions"]["generate_image_v2_1"]
    start = before["generate_image_v2_1"]
    assert (moved["x"] - start["x"], moved["y"] - start["y"]) == (200, 60)
    assert flow["steps"][0]["parameters"]["prompt"] == "$.input.generate_image_v2_1_prompt"
    prop = flow["input"]["properties"]["generate_image_v2_1_prompt"]
    assert prop["type"] == "string" and prop["default"] == "a green square"


def test_validation_error_is_shown_next_to_its_field(
    served: Served, open_page: Callable[[str], Page]
) -> None:
    page = open_page(served.url)
    gen = add(page, "Generate Image V2", Prompt="a red circle", Steps="80")
    page.get_by_role("button", name="Run", exact=True).click()
    steps_field = gen.locator('.field[data-field="steps"]')
    alert = steps_field.get_by_role("alert")
    expect(alert).to_contain_text("INVALID_STEPS", timeout=WAIT_MS)
    expect(alert).to_contain_text("steps.generate_image_v2_1.parameters.steps")  # its field
    assert "50" in alert.inner_text()  # the message or solution gives the allowed range
    steps = gen.get_by_label("Steps", exact=True)
    expect(steps).to_have_attribute("aria-invalid", "true")
    described = steps.evaluate(
        "e => e.getAttribute('aria-describedby').split(' ')"
        ".map(i => document.getElementById(i).textContent).join(' ')"
    )
    assert "INVALID_STEPS" in described  # a screen reader reads it with the field
    expect(page.get_by_role("status")).to_contain_text("steps.generate_image_v2_1.parameters.steps")
    # Fixing the field clears its error.
    steps.fill("2")
    expect(steps_field.get_by_role("alert")).to_have_count(0)


def test_cancel_a_long_run(served: Served, open_page: Callable[[str], Page]) -> None:
    page = open_page(served.url)
    gen = add(page, "Generate Image V2", Prompt="a long run", Steps="50")
    gen.get_by_label("Batch size", exact=True).fill("8")
    page.get_by_role("button", name="Run", exact=True).click()
    bar = gen.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuemax", "50", timeout=WAIT_MS)
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Cancelled.", timeout=WAIT_MS)
    assert int(bar.get_attribute("aria-valuenow") or 0) < 50
    (job,) = newest_jobs(served, 1)
    # A flow job's cancel arrives as the step's CANCELLED error (the flow runner rewraps
    # it per step, so the service records the flow as failed rather than cancelled).
    assert job["error"]["code"] == "CANCELLED"
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()


def test_upload_by_file_picker_and_by_drop(
    served: Served, open_page: Callable[[str], Page], tmp_path: Path
) -> None:
    page = open_page(served.url)
    i2i = add(page, "Image to Image", Prompt="a circle", Steps="2", Seed="3")
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 96), (220, 20, 20)).save(picture)
    i2i.get_by_label("Upload Source Image", exact=True).set_input_files(str(picture))
    source = i2i.get_by_label("Source Image", exact=True)
    expect(source).to_have_value(re.compile(r"uploads/[0-9a-f]{64}\.png$"))
    first = source.input_value()
    # Drag and drop a second image onto the field.
    buf = io.BytesIO()
    Image.new("RGB", (64, 96), (20, 20, 220)).save(buf, "PNG")
    field = i2i.locator('.field[data-field="source_image"]')
    transfer = page.evaluate_handle(
        """bytes => { const t = new DataTransfer();
             t.items.add(new File([new Uint8Array(bytes)], "blue.png", {type: "image/png"}));
             return t; }""",
        list(buf.getvalue()),
    )
    field.dispatch_event("dragover", {"dataTransfer": transfer})
    field.dispatch_event("drop", {"dataTransfer": transfer})
    expect(source).not_to_have_value(first)
    expect(source).to_have_value(re.compile(r"uploads/[0-9a-f]{64}\.png$"))
    page.get_by_role("button", name="Run", exact=True).click()
    thumb = i2i.get_by_role("img", name="Image to Image image 1", exact=True)
    expect(thumb).to_be_visible(timeout=WAIT_MS)
    (job,) = newest_jobs(served, 1)
    made = read_png(served, step_images(job, "image_to_image_1")[0])
    assert natural_size(thumb) == made.size and made.size[0] * 3 == made.size[1] * 2  # 64:96


def test_keyboard_alone_adds_fills_and_runs(
    served: Served, open_page: Callable[[str], Page]
) -> None:
    page = open_page(served.url)

    def tab_to(name: str, key: str = "Tab", limit: int = 80) -> None:
        for _ in range(limit):
            page.keyboard.press(key)
            if page.evaluate("document.activeElement.textContent.trim()") == name:
                return
        raise AssertionError(f"{name!r} not reached with {key}")

    tab_to("Generate Image V2")
    page.keyboard.press("Enter")  # adds the node and focuses its first field
    gen = node(page, "Generate Image V2")
    expect(gen.get_by_label("Prompt", exact=True)).to_be_focused()
    page.keyboard.type("a keyboard circle")
    steps = gen.get_by_label("Steps", exact=True)
    for _ in range(20):  # Prompt → its flow-input box → Negative Prompt → … → Steps
        page.keyboard.press("Tab")
        if steps.evaluate("e => e === document.activeElement"):
            break
    expect(steps).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    tab_to("Run", key="Shift+Tab")
    page.keyboard.press("Enter")
    finished(gen)
    expect(gen.get_by_role("img", name="Generate Image V2 image 1")).to_be_visible(timeout=WAIT_MS)
    assert gen.get_by_label("Prompt", exact=True).input_value() == "a keyboard circle"


def test_token_is_asked_once_and_kept_in_session_storage(
    tmp_path: Path, open_page: Callable[[str], Page]
) -> None:
    served = _start(tmp_path, token=TOKEN)
    try:
        with served.client() as c:
            assert c.get("/").status_code == 200  # the page itself needs no token
            assert TOKEN not in c.get("/").text and TOKEN not in c.get("/web/builder.js").text
            assert c.get("/web/config.json").json() == {"token_required": True}
            assert c.get("/v1/nodes").status_code == 401
        page = open_page(served.url)
        page.get_by_label("Token", exact=True).fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(page.get_by_role("button", name="Generate Image V2", exact=True)).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('imagenodes.token')") == TOKEN
        assert page.evaluate("localStorage.getItem('imagenodes.token')") is None
        page.reload()  # asked once: the tab keeps it
        expect(page.get_by_role("button", name="Generate Image V2", exact=True)).to_be_visible()
        expect(page.get_by_label("Token", exact=True)).not_to_be_visible()
    finally:
        _stop(served)


def test_a_hand_written_seed_flow_loads_and_saves_back(
    served: Served, open_page: Callable[[str], Page], tmp_path: Path
) -> None:
    """The seed's shape: CamelCase types, its own step ids, a JSON-valued parameter."""
    flow = {
        "title": "Let's generate images!",
        "input": {"type": "object", "properties": {"prompt": {"type": "string"}}},
        "steps": [
            {
                "id": "dynamicImageGenerator",
                "type": "ImageGenerator",
                "parameters": {
                    "images": [{"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}]
                },
            },
            {
                "id": "edit",
                "type": "image-to-image",
                "parameters": {
                    "source_image": "$.results.dynamicImageGenerator.images.0",
                    "prompt": "blue",
                    "negative_prompt": "",
                },
            },
        ],
    }
    path = tmp_path / "seed-flow.json"
    path.write_text(json.dumps(flow))
    page = open_page(served.url)
    page.get_by_label("Load flow").set_input_files(str(path))
    gen = node(page, "Image Generator (dynamicImageGenerator)")
    images = json.loads(gen.get_by_label("Images", exact=True).input_value())
    assert images == flow["steps"][0]["parameters"]["images"]
    edit = node(page, "Image to Image (edit)")
    expect(edit.get_by_label("Source Image", exact=True)).to_have_count(0)  # wired
    edit.get_by_label("Steps", exact=True).fill("2")
    with page.expect_download() as download:
        page.get_by_role("button", name="Save flow").click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert [(s["id"], s["type"]) for s in saved["steps"]] == [
        ("dynamicImageGenerator", "image_generator"),
        ("edit", "image_to_image"),
    ]
    assert saved["steps"][0]["parameters"]["images"] == flow["steps"][0]["parameters"]["images"]
    assert saved["steps"][1]["parameters"]["source_image"] == (
        "$.results.dynamicImageGenerator.images.0"
    )
    assert saved["steps"][1]["parameters"]["steps"] == 2


def test_a_flow_chosen_before_the_catalog_arrives_is_loaded_once_it_does(
    served: Served, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    """The catalog request is held back while the user picks a flow file: the page waits
    for the catalog, then loads the file (not 'no node for step type')."""
    held: list[Any] = []
    flow = {"steps": [{"id": "board", "type": "checkerboard", "parameters": {"size": 16}}]}
    path = tmp_path / "early.json"
    path.write_text(json.dumps(flow))
    page = open_page(served.url, lambda p: p.route("**/v1/nodes", lambda route: held.append(route)))
    expect(page.locator("#status")).to_have_text("Loading the node catalog…")
    page.get_by_label("Load flow").set_input_files(str(path))
    page.wait_for_timeout(300)  # the file is read; the catalog is still held
    assert len(held) == 1 and node(page, "Checkerboard (board)").count() == 0
    held[0].continue_()
    expect(node(page, "Checkerboard (board)").get_by_label("Size", exact=True)).to_have_value("16")
    expect(page.locator("#status")).to_have_text("Loaded early.json.")
