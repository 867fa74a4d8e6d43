"""``imagenodes trainings|packs|sessions``: manage the workspace libraries from the shell.

Installed through ``add_commands`` like the flow and MCP commands.  Every command
prints JSON on stdout; errors are the main CLI's coded JSON on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from imagenodes.cli import EXIT_OK, open_host
from imagenodes.sdk import hookimpl


def _print(out: TextIO, value: Any) -> int:
    json.dump(value, out, indent=2)
    out.write("\n")
    return EXIT_OK


# -- trainings -------------------------------------------------------------------------
def cmd_trainings_add(args: argparse.Namespace, out: TextIO) -> int:
    record = open_host(args).trainings.add(
        args.training_id,
        args.path,
        base_model=args.base_model,
        name=args.name,
        overwrite=args.overwrite,
    )
    return _print(out, record)


def cmd_trainings_list(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).trainings.list())


def cmd_trainings_show(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).trainings.get(args.training_id))


def cmd_trainings_remove(args: argparse.Namespace, out: TextIO) -> int:
    open_host(args).trainings.remove(args.training_id)
    return _print(out, {"removed": args.training_id})


# -- packs -----------------------------------------------------------------------------
def _read_images(spec: str) -> Any:
    """``--images`` is JSON text, ``@file.json`` or ``-``; a list or {"images": [...]}."""
    from imagenodes.cli import read_json_arg

    data = read_json_arg(spec, "--images", sys.stdin)
    if isinstance(data, dict) and "images" in data:
        data = data["images"]
    return data


def cmd_packs_create(args: argparse.Namespace, out: TextIO) -> int:
    record = open_host(args).packs.create(
        _read_images(args.images),
        name=args.name,
        description=args.description,
        pack_id=args.id,
        overwrite=args.overwrite,
    )
    return _print(out, record)


def cmd_packs_list(args: argparse.Namespace, out: TextIO) -> int:
    packs = open_host(args).packs.list()
    return _print(
        out,
        [{"id": p["id"], "name": p["name"], "images": len(p.get("images") or [])} for p in packs],
    )


def cmd_packs_show(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).packs.get(args.pack_id))


def cmd_packs_remove(args: argparse.Namespace, out: TextIO) -> int:
    open_host(args).packs.remove(args.pack_id)
    return _print(out, {"removed": args.pack_id})


# -- sessions --------------------------------------------------------------------------
def cmd_sessions_create(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).sessions.create(args.session_id, name=args.name))


def cmd_sessions_list(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).sessions.list())


def cmd_sessions_history(args: argparse.Namespace, out: TextIO) -> int:
    return _print(out, open_host(args).sessions.history(args.session_id, limit=args.limit))


def cmd_sessions_remove(args: argparse.Namespace, out: TextIO) -> int:
    open_host(args).sessions.remove(args.session_id)
    return _print(out, {"removed": args.session_id})


@hookimpl
def register_commands(subparsers: Any) -> None:
    """This module's sub-commands, added through the hook as a pack's would be (its
    entry point is in the ``imagenodes.commands`` group)."""
    add_commands(subparsers)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("trainings", help="trained LoRA adapters stored in the workspace")
    tsub = p.add_subparsers(dest="trainings_command", required=True)
    add = tsub.add_parser("add", help="register a diffusers-format LoRA under a UUID")
    add.add_argument("training_id", metavar="UUID")
    add.add_argument("path", help="LoRA folder (pytorch_lora_weights.safetensors) or file")
    add.add_argument("--base-model", help="the model the adapter was trained on")
    add.add_argument("--name", help="a label")
    add.add_argument("--overwrite", action="store_true", help="replace an existing training")
    add.set_defaults(func=cmd_trainings_add)
    tsub.add_parser("list", help="list trainings").set_defaults(func=cmd_trainings_list)
    show = tsub.add_parser("show", help="print one training's record")
    show.add_argument("training_id", metavar="UUID")
    show.set_defaults(func=cmd_trainings_show)
    rm = tsub.add_parser("remove", help="delete a training")
    rm.add_argument("training_id", metavar="UUID")
    rm.set_defaults(func=cmd_trainings_remove)

    p = sub.add_parser("packs", help="inference packs: saved sets of image requests")
    psub = p.add_subparsers(dest="packs_command", required=True)
    create = psub.add_parser("create", help="store a pack of image_generator requests")
    create.add_argument(
        "--images",
        required=True,
        help='JSON list of requests (or {"images": [...]}), @file.json, or - for stdin',
    )
    create.add_argument("--name", help="a label")
    create.add_argument("--description", help="what the pack is for")
    create.add_argument("--id", help="UUID to use (default: a new one)")
    create.add_argument("--overwrite", action="store_true", help="replace an existing pack")
    create.set_defaults(func=cmd_packs_create)
    psub.add_parser("list", help="list packs").set_defaults(func=cmd_packs_list)
    show = psub.add_parser("show", help="print one pack")
    show.add_argument("pack_id", metavar="UUID")
    show.set_defaults(func=cmd_packs_show)
    rm = psub.add_parser("remove", help="delete a pack")
    rm.add_argument("pack_id", metavar="UUID")
    rm.set_defaults(func=cmd_packs_remove)

    p = sub.add_parser("sessions", help="generate_image sessions and their histories")
    ssub = p.add_subparsers(dest="sessions_command", required=True)
    create = ssub.add_parser("create", help="create a session")
    create.add_argument("session_id", nargs="?", help="id to use (default: a new one)")
    create.add_argument("--name", help="a label")
    create.set_defaults(func=cmd_sessions_create)
    ssub.add_parser("list", help="list sessions").set_defaults(func=cmd_sessions_list)
    hist = ssub.add_parser("history", help="a session's generations, oldest first")
    hist.add_argument("session_id")
    hist.add_argument("--limit", type=int, help="only the most recent entries")
    hist.set_defaults(func=cmd_sessions_history)
    rm = ssub.add_parser("remove", help="delete a session and its history")
    rm.add_argument("session_id")
    rm.set_defaults(func=cmd_sessions_remove)
