"""``imagenodes flow run|check``: run a flow file from the shell.

Installed by :func:`imagenodes.cli.build_parser` through ``add_commands``; output and
exit codes follow the main CLI (result JSON on stdout, coded JSON errors on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from imagenodes.cli import EXIT_OK, add_progress_flags, open_host, progress_display, read_inputs


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
