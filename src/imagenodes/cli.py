"""The ``imagenodes`` command: list nodes, print schemas, run nodes from a shell.

Exit codes: 0 ok, 2 for input/connection errors (the caller can fix them), 1 for
anything else.  Errors go to stderr as JSON so scripts can branch on ``code``; the
result JSON goes to stdout; a progress bar goes to stderr while denoising.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from imagenodes.errors import ImageNodesError, InputError

EXIT_OK, EXIT_FAILED, EXIT_USER = 0, 1, 2


def _parse_value(raw: str) -> Any:
    """``--set steps=30`` gives 30, ``--set prompt=a cat`` gives "a cat"."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_json_arg(spec: str, field: str, stdin: TextIO) -> Any:
    """A JSON argument given inline, as ``@file.json`` or as ``-`` (stdin)."""
    if spec == "-":
        text = stdin.read()
    elif spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise InputError(
                f"cannot read {field} file {spec[1:]!r}: {exc.strerror}", field=field
            ) from None
    else:
        text = spec
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{field} is not valid JSON: {exc}", field=field) from None


def read_inputs(spec: str | None, sets: Sequence[str], stdin: TextIO) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if spec:
        data = read_json_arg(spec, "--input", stdin)
        if not isinstance(data, dict):
            raise InputError("--input must be a JSON object", field="--input")
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects key=value, got {item!r}", field="--set")
        data[key] = _parse_value(value)
    return data


class ProgressBar:
    """A one-line denoising bar on stderr; quiet when stderr is not a terminal-like
    stream the user asked for (``--quiet``)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.active = False

    def __call__(self, event: Any) -> None:
        if event.type == "step":
            d = event.data
            filled = int(self.width * d["step"] / max(1, d["total"]))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(
                f"\r{event.node} batch {d['batch_index']}: [{bar}] {d['step']}/{d['total']} "
                f"{d['elapsed_s']:.1f}s eta {d['eta_s']:.1f}s"
            )
            self.stream.flush()
            self.active = True
        elif event.type in ("model_loading", "run_finished", "run_failed", "run_cancelled"):
            if self.active:
                self.stream.write("\n")
                self.active = False
            if event.type == "model_loading":
                self.stream.write(f"loading {event.data.get('model')}…\n")
                self.stream.flush()


def _host(args: argparse.Namespace) -> Any:
    from imagenodes.registry.host import Host

    return Host(args.workspace, connections_file=args.connections)


def cmd_nodes(args: argparse.Namespace, out: TextIO) -> int:
    host = _host(args)
    entries = host.catalog()
    if args.json:
        json.dump({"nodes": entries, "packs": host.packs()}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    rows = [("ID", "VERSION", "CATEGORY", "AVAILABLE", "TITLE")]
    for e in entries:
        avail = "yes" if e["availability"]["available"] else "no: " + e["availability"]["reason"]
        rows.append((e["id"], e["version"], e["category"], avail, e["title"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        out.write("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] + "\n")
    for pack in host.packs():
        if pack["status"] != "available":
            out.write(f"\npack {pack['name']} is {pack['status']}: {pack['reason']}")
    out.write("\n")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    host = _host(args)
    cls = host.node(args.node)
    entry = next(e for e in host.catalog() if e["id"] == cls.id)
    json.dump(entry, out, indent=2)
    out.write("\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    inputs = read_inputs(args.input, args.set or [], sys.stdin)
    host = _host(args)
    bar = None if args.quiet else ProgressBar(sys.stderr)
    conns = dict(item.split("=", 1) for item in args.connection or [])
    result = host.run(
        args.node, inputs, on_event=bar, timeout=args.timeout, connections=conns or None
    )
    json.dump(result.to_dict(), out, indent=2)
    out.write("\n")
    return EXIT_OK


def cmd_connections(args: argparse.Namespace, out: TextIO) -> int:
    host = _host(args)
    json.dump(host.connections.public(), out, indent=2)
    out.write("\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagenodes", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workspace",
        help="workspace URL or folder (default: $IMAGENODES_WORKSPACE or ./workspace)",
    )
    parser.add_argument("--connections", help="connections TOML file")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("nodes", help="list the node catalog")
    p.add_argument("--json", action="store_true", help="full catalog as JSON")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("schema", help="print a node's catalog entry (schemas) as JSON")
    p.add_argument("node")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("run", help="run a node and print the result JSON")
    p.add_argument("node")
    p.add_argument("--input", "-i", help="JSON object, @file.json, or - for stdin")
    p.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="set one input (value parsed as JSON when possible)",
    )
    p.add_argument("--timeout", type=float, help="seconds before GENERATION_TIMEOUT")
    p.add_argument(
        "--connection",
        action="append",
        metavar="CATEGORY=NAME",
        help="use a named connection for a category",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("connections", help="list configured connections (secrets masked)")
    p.set_defaults(func=cmd_connections)

    for hook in _extra_commands():
        hook(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Sub-command installers of optional modules (flows, trainings, packs, mcp)."""
    installers = []
    for module in ("imagenodes.flows.cli", "imagenodes.library.cli", "imagenodes.mcp_server"):
        try:
            mod = __import__(module, fromlist=["add_commands"])
        except ImportError:
            continue
        installers.append(mod.add_commands)
    return installers


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, out))
    except ImageNodesError as exc:
        json.dump({"error": exc.to_dict()}, sys.stderr)
        sys.stderr.write("\n")
        return EXIT_USER if exc.is_user_error else EXIT_FAILED
    except KeyboardInterrupt:
        json.dump({"error": {"code": "CANCELLED", "message": "interrupted"}}, sys.stderr)
        sys.stderr.write("\n")
        return EXIT_FAILED
    except Exception as exc:  # the CLI promises JSON errors, never a traceback
        json.dump(
            {"error": {"code": "GENERATION_FAILED", "message": f"{type(exc).__name__}: {exc}"}},
            sys.stderr,
        )
        sys.stderr.write("\n")
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
