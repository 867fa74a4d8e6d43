"""The ``imagenodes`` command: list nodes, print schemas, run nodes from a shell.

Exit codes: 0 ok, 2 for input/connection errors (the caller can fix them), 1 for
anything else.  Errors go to stderr as JSON so scripts can branch on ``code``; the
result JSON goes to stdout.  While denoising, progress bars go to stderr when it is a
terminal (``--progress`` forces them, ``--quiet`` turns them off).  Library warnings
and logs go to stderr through :mod:`logging`; advisories known to be harmless are
hidden unless ``-v`` is given, and ``-v`` also shows INFO logs (``-vv`` DEBUG).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from imagenodes.errors import ImageNodesError, InputError
from imagenodes.logs import quiet_libraries

if TYPE_CHECKING:
    from rich.progress import ProgressColumn, TaskID

    from imagenodes import Host

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


@functools.cache
def _step_times_column() -> type[ProgressColumn]:
    """The bar's time column class; made on first use so that commands which never
    draw a bar (``nodes``, ``schema``, ``mcp``) do not import rich.progress."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class StepTimesColumn(ProgressColumn):
        """Elapsed time and ETA of one batch, from the engine's own step timings.

        Rich's time columns would start counting when the bar appears (after the first
        step) and estimate the ETA from too few samples; the engine measures from the
        start of denoising.  Between step events both values keep moving (elapsed up,
        ETA down) so a slow step on a CPU does not look like a hang.
        """

        def render(self, task: Task) -> Text:
            fields = task.fields
            since = 0.0 if task.finished else time.monotonic() - fields["at"]
            elapsed = fields["elapsed_s"] + since
            eta = max(0.0, fields["eta_s"] - since)
            return Text(f"{_seconds(elapsed)} eta {_seconds(eta)}", style="progress.remaining")

    return StepTimesColumn


def _seconds(value: float) -> str:
    """``4.2s`` under a minute, ``3:07`` above: short enough for a bar's tail."""
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return (
        f"{minutes}:{secs:02d}"
        if minutes < 60
        else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
    )


class ProgressDisplay:
    """Denoising progress on stderr: one rich bar per batch, keyed by node, run and
    batch, with the step count, elapsed time and ETA.

    A run's bars disappear when it finishes, fails or is cancelled (the result JSON on
    stdout is what stays); the ``loading <model>…`` line stays.  On a stream that is not
    a terminal (a pipe, a log file) nothing is written unless ``force`` is set
    (``--progress``), because redraw sequences in a captured stream are noise; ``force``
    draws the bars anyway, for tools that show a captured stream as a terminal would.

    The host calls the instance with its events, possibly from a worker thread, so the
    batch-to-task map is guarded by a lock (rich's :class:`~rich.progress.Progress` has
    its own).  Use it as a context manager: leaving the block takes the bars down even
    when the run raised.
    """

    def __init__(self, stream: TextIO, *, force: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        is_tty = bool(getattr(stream, "isatty", None) and stream.isatty())
        self.enabled = force or is_tty
        self.console = Console(file=stream, force_terminal=True if force else None)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("step"),
            MofNCompleteColumn(),
            _step_times_column()(),
            console=self.console,
            transient=True,
            # stdout carries the result JSON: never reroute it to the bars' stream.
            redirect_stdout=False,
        )
        self._lock = threading.Lock()
        self._tasks: dict[tuple[str, str, int], TaskID] = {}
        self._started = False
        self._closed = False

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Take the bars down and give the terminal back (idempotent)."""
        with self._lock:
            self._closed = True
            self._tasks.clear()
            if self._started:
                self.progress.stop()
                self._started = False

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        if event.type == "node.progress":
            self._step(event)
        elif event.type in ("run.finished", "run.failed", "run.cancelled"):
            self._end_run(event.run_id)
        elif event.type == "model.loading" and not self._closed:
            # Printed above the bars while they are live, as a plain line otherwise.
            self.console.print(f"loading {event.model}…", markup=False, highlight=False)

    def _step(self, event: Any) -> None:
        d = event.data
        key = (event.node, event.run_id, int(d["batch_index"]))
        elapsed_s, eta_s = float(d["elapsed_s"]), float(d["eta_s"])
        with self._lock:
            if self._closed:  # a worker still stepping after the command gave up on it
                return
            if not self._started:
                # Started on the first step, not before: a run without denoising steps
                # (a checkerboard, a cached result) never takes the terminal over.
                self.progress.start()
                self._started = True
            now = time.monotonic()
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self.progress.add_task(
                    _batch_label(event.node, d),
                    total=d["total"],
                    completed=d["step"],
                    elapsed_s=elapsed_s,
                    eta_s=eta_s,
                    at=now,
                )
            # Refreshed on every step so each one is drawn, also when steps outpace the
            # display's own refresh rate.
            self.progress.update(
                task,
                completed=d["step"],
                total=d["total"],
                refresh=True,
                elapsed_s=elapsed_s,
                eta_s=eta_s,
                at=now,
            )

    def _end_run(self, run_id: str) -> None:
        with self._lock:
            for key in [k for k in self._tasks if k[1] == run_id]:
                self.progress.remove_task(self._tasks.pop(key))


def _batch_label(node: str, data: dict[str, Any]) -> str:
    """``generate_image_v2 images 1-4``: which of the run's images a bar denoises."""
    first = int(data["batch_index"]) + 1
    count = int(data.get("batch_size") or 1)
    return f"{node} image {first}" if count == 1 else f"{node} images {first}-{first + count - 1}"


def open_host(args: argparse.Namespace) -> Host:
    """The :class:`~imagenodes.Host` a command works on, from the global ``--workspace``
    and ``--connections`` flags.

    Every sub-command (flows, trainings/packs/sessions, MCP, serve, and the commands
    packs add through ``register_commands``) opens its host through this one function,
    so the flags mean the same everywhere.  Imported lazily: building the parser and ``--help`` must
    not pay for the registry and plugin discovery.
    """
    from imagenodes import Host
    from imagenodes.workspace import UrlPolicy

    policy = UrlPolicy(
        allow_private=bool(getattr(args, "url_allow_private", False)),
        allow_hosts=tuple(getattr(args, "url_allow_host", None) or ()),
    )
    return Host(args.workspace, connections_file=args.connections, url_policy=policy)


def cmd_nodes(args: argparse.Namespace, out: TextIO) -> int:
    host = open_host(args)
    entries = host.catalog()
    if args.json:
        json.dump({"nodes": entries, "packs": host.plugin_packs()}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    rows = [("ID", "VERSION", "CATEGORY", "AVAILABLE", "TITLE")]
    for e in entries:
        avail = "yes" if e["availability"]["available"] else "no: " + e["availability"]["reason"]
        rows.append((e["id"], e["version"], e["category"], avail, e["title"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        out.write("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] + "\n")
    for pack in host.plugin_packs():
        if pack["status"] != "available":
            out.write(f"\npack {pack['name']} is {pack['status']}: {pack['reason']}")
    out.write("\n")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    host = open_host(args)
    cls = host.node(args.node)
    entry = next(e for e in host.catalog() if e["id"] == cls.id)
    json.dump(entry, out, indent=2)
    out.write("\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    inputs = read_inputs(args.input, args.set or [], sys.stdin)
    host = open_host(args)
    conns = dict(item.split("=", 1) for item in args.connection or [])
    with progress_display(args) as bar:
        result = host.run(
            args.node, inputs, on_event=bar, timeout=args.timeout, connections=conns or None
        )
    json.dump(result.to_dict(), out, indent=2)
    out.write("\n")
    return EXIT_OK


def cmd_connections(args: argparse.Namespace, out: TextIO) -> int:
    host = open_host(args)
    json.dump(host.connections.public(), out, indent=2)
    out.write("\n")
    return EXIT_OK


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--quiet`` for a command that denoises (``run``, ``flow run``).

    Mutually exclusive: asking for both is a mistake worth an error, not a guess.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        action="store_true",
        help="draw progress bars on stderr even when it is not a terminal",
    )
    group.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def progress_display(args: argparse.Namespace) -> ProgressDisplay:
    """The progress handler the flags of :func:`add_progress_flags` ask for."""
    display = ProgressDisplay(sys.stderr, force=getattr(args, "progress", False))
    if getattr(args, "quiet", False):
        display.enabled = False
    return display


# -- library logging -------------------------------------------------------------------
#: Advisories that are harmless for what imagenodes does, hidden unless ``-v``: the
#: logger (prefix) that emits them and a pattern of their text.  transformers warns once
#: per image-processor class when torchvision is missing (diffusers' pipeline modules
#: import ``CLIPImageProcessor`` and ``SiglipImageProcessor``) and falls back to the
#: PIL processors, which is what the engine wants anyway: it never needs torchvision.
KNOWN_HARMLESS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("transformers", re.compile(r"requires torchvision \(not installed\); falling back to")),
)

_log_level = logging.WARNING


class KnownHarmlessFilter(logging.Filter):
    """Drops the records :data:`KNOWN_HARMLESS` lists; every other warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for prefix, pattern in KNOWN_HARMLESS:
            from_it = record.name == prefix or record.name.startswith(prefix + ".")
            if from_it and pattern.search(record.getMessage()):
                return False
        return True


class _LibraryFormatter(logging.Formatter):
    """``[transformers] message``: the library's name, as transformers itself prints it,
    and the level when it is not a warning."""

    def format(self, record: logging.LogRecord) -> str:
        lib = "warnings" if record.name == "py.warnings" else record.name.split(".")[0]
        level = "" if record.levelno == logging.WARNING else f"{record.levelname.lower()}: "
        # rstrip: a captured warning arrives formatted with its own trailing newline.
        return f"[{lib}] {level}{super().format(record).rstrip()}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes: while the progress bars
    are live, rich puts a proxy there that prints above them, and a test harness may
    have swapped stderr since the handler was made."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.setStream; nothing to keep
        pass


def configure_logging(verbosity: int = 0) -> None:
    """One stderr handler on the root logger for every library's warnings and logs.

    ``logging.captureWarnings`` sends :mod:`warnings` there too.  With verbosity 0 the
    root level is WARNING and :class:`KnownHarmlessFilter` hides the known advisories;
    1 shows everything from INFO up, 2 from DEBUG.  Safe to call again (``main`` may run
    several times in one process): the handler, filter and import hook are set up once
    and re-tuned.
    """
    global _log_level
    _log_level = (
        logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(_LibraryFormatter())
        root.addHandler(handler)
    for old in [f for f in handler.filters if isinstance(f, KnownHarmlessFilter)]:
        handler.removeFilter(old)
    if verbosity <= 0:
        handler.addFilter(KnownHarmlessFilter())
    # On the handler too: a library logger left at INFO by an earlier ``-v`` call in
    # this process would otherwise still get its INFO records through.
    handler.setLevel(_log_level)
    root.setLevel(_log_level)
    logging.captureWarnings(True)
    # The libraries' own stderr handlers go and their warnings become their loggers'
    # records (imagenodes.logs), so they reach this handler, named and filtered.
    quiet_libraries(level=_log_level if _log_level < logging.WARNING else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagenodes", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workspace",
        help="workspace URL or folder (default: $IMAGENODES_WORKSPACE or ./workspace)",
    )
    parser.add_argument("--connections", help="connections TOML file")
    parser.add_argument(
        "--url-allow-host",
        action="append",
        default=None,
        metavar="HOST",
        help="image URLs may point at HOST even at a private address (repeat)",
    )
    parser.add_argument(
        "--url-allow-private",
        action="store_true",
        help="image URLs may point at private/loopback addresses (default: public only)",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="count",
        default=0,
        help="show every library warning, INFO logs with -v, DEBUG with -vv",
    )
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
    add_progress_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("connections", help="list configured connections (secrets masked)")
    p.set_defaults(func=cmd_connections)

    add_pack_commands(sub)
    return parser


def add_pack_commands(subparsers: Any) -> None:
    """Every pack's sub-commands, through the ``register_commands`` hook.

    The built-in groups (``flow``, ``trainings``/``packs``/``sessions``, ``mcp``,
    ``serve``) are entry points of the ``imagenodes.commands`` group and register exactly
    as a third-party pack does; packs of the ``imagenodes`` group may add commands too.
    Only the modules are imported and registered (no catalog is built), honouring
    ``IMAGENODES_DISABLE_PLUGINS``; a pack whose hook raises loses its commands alone.
    """
    from imagenodes.registry.plugins import COMMANDS_GROUP, ENTRY_POINT_GROUP, PluginLoader

    loader = PluginLoader(groups=(ENTRY_POINT_GROUP, COMMANDS_GROUP), registrations=False)
    loader.register_commands(subparsers)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    # Before the parser is built: a pack whose commands fail to register says so.
    configure_logging(0)
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
