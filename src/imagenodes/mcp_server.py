"""``imagenodes mcp``: every catalog node as a Model Context Protocol tool, over stdio.

Built on the official ``mcp`` SDK's low-level :class:`mcp.server.lowlevel.Server`
(not the decorator layer) because the tools are not Python functions: they are the
host's catalog, and each tool's ``inputSchema`` must be the node's own JSON Schema.

* Tool names are node ids, except the seed-004 names ``generate-image`` and
  ``check-engine-status`` (:data:`TOOL_ALIASES`).
* A call is ``host.arun`` (``Host.run`` in a worker thread), so validation, the
  node's timeout, staging and run records are exactly those of any other caller.
  A client cancelling the request cancels the run; a client that sends a progress
  token gets one ``notifications/progress`` per denoising step.
* Success: generated images as MCP ``image`` content (base64 PNG) whose ``_meta``
  carries the workspace reference (and, for generate-image, the seed's metadata),
  plus a ``text`` item and ``structuredContent`` with the outputs (image data
  replaced by references), run id, seeds and notices.
* Failure: ``isError: true`` with ``{"error": {code, field, message, solution}}`` as
  text and as ``structuredContent``; the server itself keeps running.

Arguments are validated by the host, not by the SDK, so a bad call gets the same
coded error (``INVALID_DIMENSIONS``, ``EMPTY_PROMPT``, …) as the CLI would print.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from imagenodes.errors import ImageNodesError, InputError, UnknownNodeError
from imagenodes.sdk import hookimpl

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp_types import CallToolResult, Tool

    from imagenodes.registry.events import Event
    from imagenodes.registry.host import Host, RunResult

SERVER_NAME = "imagenodes"
#: Node id → tool name where the seed fixes another name.
TOOL_ALIASES: dict[str, str] = {
    "generate_image": "generate-image",
    "check_engine_status": "check-engine-status",
}
#: Workspace PNGs returned inline per call (the rest stay references).
MAX_INLINE_IMAGES = 8
META_REF = "imagenodes/ref"
META_METADATA = "imagenodes/metadata"


def tool_name(node_id: str) -> str:
    return TOOL_ALIASES.get(node_id, node_id)


def node_for_tool(host: Host, name: str) -> str:
    """The node id behind a tool name (aliases, then the id itself)."""
    for node_id, alias in TOOL_ALIASES.items():
        if alias == name and node_id in host.nodes:
            return node_id
    if name in host.nodes:
        return name
    known = ", ".join(sorted(tool_name(n) for n in host.nodes))
    raise UnknownNodeError(f"no tool {name!r}; available: {known}", field="name")


def list_tools(host: Host) -> list[Tool]:
    import mcp_types as types

    tools = []
    for entry in host.catalog():
        description = entry["description"]
        if not entry["availability"]["available"]:
            description += f" (currently unavailable: {entry['availability']['reason']})"
        tools.append(
            types.Tool(
                name=tool_name(entry["id"]),
                title=entry["title"],
                description=description,
                input_schema=entry["input_schema"],
            )
        )
    return tools


def error_result(exc: ImageNodesError) -> CallToolResult:
    import mcp_types as types

    payload = {"error": exc.to_dict()}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload))],
        structured_content=payload,
        is_error=True,
    )


def success_result(host: Host, node_id: str, result: RunResult) -> CallToolResult:
    """Image content for the run's images plus the outputs as text/structured content."""
    import mcp_types as types

    outputs = json.loads(json.dumps(result.outputs))
    content: list[Any] = []
    declared = host.node(node_id).image_content if node_id in host.nodes else None
    if declared is not None:
        # The node's output already holds MCP-shaped image items (its declaration):
        # return them as image content and keep only the reference in the text.
        items_field, refs_field = declared
        stored = outputs.get(refs_field) or []
        for index, item in enumerate(outputs.get(items_field) or []):
            ref = stored[index] if index < len(stored) else None
            content.append(
                types.ImageContent(
                    type="image",
                    data=item["data"],
                    mime_type=item["mimeType"],
                    meta={META_REF: ref, META_METADATA: item.get("metadata")},
                )
            )
            # The data is in the image content already; keep the reference instead.
            item["data"] = ref
    else:
        refs = [ref for ref in host.workspace.refs_in(outputs) if ref.endswith(".png")]
        for ref in refs[:MAX_INLINE_IMAGES]:
            try:
                data = host.workspace.read_bytes(ref)
            except ImageNodesError:
                continue
            content.append(
                types.ImageContent(
                    type="image",
                    data=base64.b64encode(data).decode("ascii"),
                    mime_type="image/png",
                    meta={META_REF: ref},
                )
            )
    summary = {
        "node": node_id,
        "run_id": result.run_id,
        "outputs": outputs,
        "seeds": result.seeds,
        "notices": result.notices,
        "pipeline_calls": result.pipeline_calls,
        "timings": result.timings,
    }
    content.append(types.TextContent(type="text", text=json.dumps(summary)))
    return types.CallToolResult(content=content, structured_content=summary)


ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


class _ProgressRelay:
    """Forwards the run's step events to the client as MCP progress notifications.

    Events arrive on the run's worker thread; notifications must be sent from the
    event loop, in order.  A queue drained by one task keeps the order (separate
    ``run_coroutine_threadsafe`` calls would race).  ``progress`` counts denoising
    steps over the whole run, so it only grows even when a run makes several
    pipeline calls; ``total`` is sent only while it is known to be right.
    """

    def __init__(self, report: ProgressFn) -> None:
        import asyncio

        self._report = report
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[float, float | None, str] | None] = asyncio.Queue()
        self._task = self._loop.create_task(self._drain())
        self._done = 0

    def on_event(self, event: Event) -> None:  # worker thread
        if event.type != "node.progress":
            return
        self._done += 1
        data = event.data
        total = data.get("total")
        batch = data.get("batch_index", 0)
        message = f"step {data.get('step')}/{total}"
        if data.get("batch_size", 1) > 1 or batch:
            message += f" (images {batch + 1}–{batch + data.get('batch_size', 1)})"
        exact = float(total) if total and batch == 0 and self._done <= total else None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (self._done, exact, message))

    async def _drain(self) -> None:
        while (item := await self._queue.get()) is not None:
            try:
                await self._report(*item)
            except Exception:  # a gone client must not fail the run
                return

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await self._task


async def call_tool(
    host: Host,
    name: str,
    arguments: dict[str, Any] | None,
    report_progress: ProgressFn | None = None,
) -> CallToolResult:
    """Run the node behind ``name``; every failure becomes a coded tool error.

    ``report_progress`` (the request context's) receives one notification per
    denoising step; the SDK drops them when the client sent no progress token.
    """
    import anyio

    run_id = uuid.uuid4().hex
    relay = _ProgressRelay(report_progress) if report_progress is not None else None
    try:
        node_id = node_for_tool(host, name)
        result = await host.arun(
            node_id,
            arguments or {},
            run_id=run_id,
            on_event=relay.on_event if relay is not None else None,
        )
    except ImageNodesError as exc:
        return error_result(exc)
    except anyio.get_cancelled_exc_class():
        host.cancel(run_id, "cancelled by the MCP client")
        raise
    except Exception as exc:  # the server must answer, never crash on one call
        return error_result(
            ImageNodesError(f"{name} failed: {type(exc).__name__}: {exc}", field=None)
        )
    finally:
        if relay is not None:
            await relay.close()
    return success_result(host, node_id, result)


def build_server(host: Host) -> Server:
    """A low-level MCP server whose tools are the host's catalog."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    import imagenodes

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list_tools(host))

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await call_tool(host, params.name, params.arguments, ctx.session.report_progress)

    return Server(
        SERVER_NAME,
        version=imagenodes.__version__,
        title="imagenodes",
        instructions="Image-generation nodes. Call check-engine-status first; generate-image "
        "returns a PNG. Images are also stored in the workspace (see _meta imagenodes/ref).",
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


async def serve_stdio(host: Host) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(host)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise InputError(
            "the MCP server needs the mcp package: pip install 'imagenodes[mcp]'", field="mcp"
        ) from None


def cmd_mcp(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    from imagenodes.cli import EXIT_OK, open_host

    _require_sdk()
    host = open_host(args)
    anyio.run(serve_stdio, host)
    return EXIT_OK


@hookimpl
def register_commands(subparsers: Any) -> None:
    """This module's sub-commands, added through the hook as a pack's would be (its
    entry point is in the ``imagenodes.commands`` group)."""
    add_commands(subparsers)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("mcp", help="serve every node as an MCP tool over stdio")
    # Also accepted after the subcommand (`imagenodes mcp --workspace ws`).
    p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace URL or folder")
    p.add_argument("--connections", default=argparse.SUPPRESS, help="connections TOML file")
    p.set_defaults(func=cmd_mcp)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imagenodes.mcp_server [--workspace W]``: same as ``imagenodes mcp``."""
    from imagenodes.cli import main as cli_main

    return cli_main(["mcp", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
