"""``imagenodes flow run|check|convert``: run a flow file from the shell, or convert
ComfyUI graphs and workflows to flows and back (:mod:`imagenodes.flows.comfy`).

Installed by :func:`imagenodes.cli.build_parser` through ``add_commands``; output and
exit codes follow the main CLI (result JSON on stdout, coded JSON errors on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from imagenodes.cli import EXIT_OK, add_progress_flags, open_host, progress_display, read_inputs
from imagenodes.errors import InputError
from imagenodes.sdk import hookimpl


def cmd_flow_run(args: argparse.Namespace, out: TextIO) -> int:
    from imagenodes.flows.runner import FlowRunner, load_flow

    flow = load_flow(args.flow)
    inputs = read_inputs(args.input, args.set or [], sys.stdin)
    host = open_host(args)
    conns = dict(item.split("=", 1) for item in args.connection or [])
    with progress_display(args) as bar:
        result = FlowRunner(host).run(flow, inputs, on_event=bar, connections=conns or None)
    json.dump(result.to_dict(), out, indent=2)
    out.write("\n")
    return EXIT_OK


def cmd_flow_check(args: argparse.Namespace, out: TextIO) -> int:
    from imagenodes.flows.runner import FlowRunner, load_flow

    flow = load_flow(args.flow)
    steps = FlowRunner(open_host(args)).check(flow)
    json.dump(
        {
            "title": flow.get("title"),
            "steps": [{k: s[k] for k in ("id", "type", "node")} for s in steps],
        },
        out,
        indent=2,
    )
    out.write("\n")
    return EXIT_OK


def _read_document(source: str) -> Any:
    """The JSON document ``source`` names: a file path, or ``-`` for stdin."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {source!r}: {exc.strerror}", field="IN") from None
    except UnicodeDecodeError:
        raise InputError(f"{source!r} is not UTF-8 text", field="IN") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{source!r} is not valid JSON: {exc}", field="IN") from None


def _document_kind(data: Any) -> tuple[str, Any]:
    """What a document to convert is: ``("flow", …)`` (a seed-003 flow: ``steps``),
    ``("workflow", …)`` (the ComfyUI editor's saved format: ``nodes``), or
    ``("graph", …)`` (an API-format graph, also inside a ``POST /prompt`` body)."""
    if not isinstance(data, Mapping):
        raise InputError(
            "IN must be a JSON object: a ComfyUI workflow or API graph, or a flow", field="IN"
        )
    if isinstance(data.get("steps"), list):
        return "flow", data
    if isinstance(data.get("nodes"), list):
        return "workflow", data
    prompt = data.get("prompt")
    if isinstance(prompt, Mapping) and not isinstance(prompt.get("class_type"), str):
        return "graph", prompt  # a /prompt body: {"client_id": …, "prompt": {…}}
    return "graph", data


def cmd_flow_convert(args: argparse.Namespace, out: TextIO) -> int:
    """A ComfyUI workflow or API graph → a flow (default), or a flow → an API graph.

    Every conversion is validated as ``POST /comfy/prompt`` would validate it, so what
    is written runs (``imagenodes flow run`` / ComfyUI's ``/prompt``); a graph's
    problems come as one coded error with ComfyUI's ``node_errors`` in its details.
    """
    from imagenodes.flows import comfy

    kind, data = _document_kind(_read_document(args.source))
    target = args.to or ("graph" if kind == "flow" else "flow")
    if kind == "flow" and target == "flow":
        raise InputError("IN is already a flow; use --to graph for a ComfyUI graph", field="--to")
    host = open_host(args)
    graph = (
        comfy.flow_to_graph(data, host)
        if kind == "flow"
        else comfy.workflow_to_graph(data, host)
        if kind == "workflow"
        else data
    )
    flow = comfy.graph_to_flow(graph, host)  # validates the graph in every direction
    result: Any = graph if target == "graph" else flow.model_dump(mode="json", exclude_unset=True)
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(
                f"cannot write {args.output!r}: {exc.strerror}", field="--output"
            ) from None
    else:
        out.write(text)
    return EXIT_OK


@hookimpl
def register_commands(subparsers: Any) -> None:
    """This module's sub-commands, added through the hook as a pack's would be (its
    entry point is in the ``imagenodes.commands`` group)."""
    add_commands(subparsers)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("flow", help="run flows: steps over registered nodes")
    flow_sub = p.add_subparsers(dest="flow_command", required=True)

    run = flow_sub.add_parser("run", help="run a flow file and print every step's outputs")
    run.add_argument("flow", help="flow JSON file")
    run.add_argument("--input", "-i", help="flow input: JSON object, @file.json, or - for stdin")
    run.add_argument(
        "--set", "-s", action="append", metavar="KEY=VALUE", help="set one flow input value"
    )
    run.add_argument(
        "--connection",
        action="append",
        metavar="CATEGORY=NAME",
        help="use a named connection for a category",
    )
    add_progress_flags(run)
    run.set_defaults(func=cmd_flow_run)

    check = flow_sub.add_parser("check", help="validate a flow's structure and step types")
    check.add_argument("flow", help="flow JSON file")
    check.set_defaults(func=cmd_flow_check)

    convert = flow_sub.add_parser(
        "convert",
        help="ComfyUI workflow/API graph → flow file, or flow → ComfyUI API graph",
        description="Convert a ComfyUI workflow (the editor's saved JSON) or API-format "
        "graph into a seed-003 flow that `imagenodes flow run` runs, or a flow into an "
        "API-format graph. The result is validated; problems exit 2 with ComfyUI's "
        "node_errors in the JSON error.",
    )
    convert.add_argument("source", metavar="IN", help="JSON file to convert, or - for stdin")
    convert.add_argument("--output", "-o", metavar="OUT", help="write here (default: stdout)")
    convert.add_argument(
        "--to",
        choices=("flow", "graph"),
        default=None,
        help="what to make (default: a flow from a ComfyUI document, a graph from a flow)",
    )
    convert.set_defaults(func=cmd_flow_convert)
