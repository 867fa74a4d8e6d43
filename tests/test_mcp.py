"""The MCP server, driven by the official SDK's client over stdio against a real
``imagenodes mcp`` subprocess (tiny SD model, configured through the environment)."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from imagenodes import Host
from imagenodes.mcp_server import TOOL_ALIASES, node_for_tool, tool_name
from tests.helpers import NODE_IDS

mcp = pytest.importorskip("mcp")


def server_params(tiny_sd: Path, workspace: Path) -> Any:
    from mcp import StdioServerParameters

    env = {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        # The test's private user config dir (root conftest), not the developer's.
        "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"],
        "IMAGENODES_CONNECTION_DEFAULT_MODEL": str(tiny_sd),
    }
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "imagenodes.cli", "mcp", "--workspace", str(workspace)],
        env=env,
    )


def test_tool_names() -> None:
    assert tool_name("generate_image") == "generate-image"
    assert tool_name("check_engine_status") == "check-engine-status"
    assert tool_name("image_generator") == "image_generator"
    assert set(TOOL_ALIASES) == {"generate_image", "check_engine_status"}


def test_stdio_server_end_to_end(
    make_host: Callable[..., Host], tiny_sd: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    local = make_host(tiny_sd, workspace=workspace)
    expected = {tool_name(e["id"]): e["input_schema"] for e in local.catalog()}
    assert node_for_tool(local, "generate-image") == "generate_image"

    async def session() -> dict[str, Any]:
        from mcp import Client

        seen: dict[str, Any] = {}
        async with Client(server_params(tiny_sd, workspace), read_timeout_seconds=300) as client:
            seen["tools"] = (await client.list_tools()).tools
            seen["status"] = await client.call_tool("check-engine-status", {})
            progress: list[tuple[float, float | None, str | None]] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                progress.append((done, total, message))

            seen["image"] = await client.call_tool(
                "generate-image",
                {"prompt": "a red circle", "width": 48, "height": 40, "steps": 2, "seed": 7},
                progress_callback=on_progress,
            )
            seen["progress"] = progress
            seen["bad"] = await client.call_tool(
                "generate-image", {"prompt": "a red circle", "width": 4096}
            )
            seen["unknown"] = await client.call_tool("no-such-tool", {})
            seen["generator"] = await client.call_tool(
                "image_generator",
                {"images": [{"prompt": "a cat", "width": 64, "height": 64, "steps": 2}]},
            )
        return seen

    seen = anyio.run(session)

    # Every catalog node is a tool whose input schema is the node's JSON Schema.
    tools = {t.name: t for t in seen["tools"]}
    assert set(tools) == set(expected) == {tool_name(node) for node in NODE_IDS}
    assert "generate_image" not in tools and "check_engine_status" not in tools
    for name, schema in expected.items():
        assert tools[name].input_schema == schema, name

    status = seen["status"]
    assert status.is_error is False
    assert status.structured_content["outputs"]["status"] in ("not_loaded", "ready")

    result = seen["image"]
    assert result.is_error is False, result.content
    # One progress notification per denoising step, in order, sent before the result.
    assert seen["progress"] == [(1.0, 2.0, "step 1/2"), (2.0, 2.0, "step 2/2")]
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    png = base64.b64decode(images[0].data)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (48, 40)
    ref = images[0].meta["imagenodes/ref"]
    assert local.workspace.read_bytes(ref) == png  # the workspace reference, same bytes
    meta = images[0].meta["imagenodes/metadata"]
    assert (meta["seed"], meta["width"], meta["height"], meta["steps"]) == (7, 48, 40, 2)
    summary = json.loads(next(c.text for c in result.content if c.type == "text"))
    assert summary["outputs"]["images"] == [ref]
    assert summary["outputs"]["content"][0]["data"] == ref  # no second copy of the base64
    assert result.structured_content == summary

    bad = seen["bad"]
    assert bad.is_error is True
    error = bad.structured_content["error"]
    assert error["code"] == "INVALID_DIMENSIONS" and error["field"] == "width"
    assert "2048" in error["message"]
    assert json.loads(bad.content[0].text) == {"error": error}

    assert seen["unknown"].is_error is True
    assert seen["unknown"].structured_content["error"]["code"] == "UNKNOWN_NODE"

    generator = seen["generator"]
    assert generator.is_error is False
    assert [c.type for c in generator.content] == ["image", "text"]
    assert generator.structured_content["outputs"]["images"] == [
        generator.content[0].meta["imagenodes/ref"]
    ]
