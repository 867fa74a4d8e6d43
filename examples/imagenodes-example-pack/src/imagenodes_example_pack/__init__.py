"""A complete third-party node pack: one node and one command, found through its
entry point.

The node uses only the package root (``imagenodes``), as every pack should, and
generates nothing: running it never imports torch.  The ``imagenodes checkerboard``
command shows the ``register_commands`` hook: a pack adds a sub-command exactly as the
built-in ``flow`` and ``serve`` groups do.
"""

import argparse
import json
from collections.abc import Callable
from typing import Annotated, Any, TextIO

from PIL import Image, ImageColor, ImageDraw
from pydantic import AfterValidator, Field

from imagenodes import ImageRef, Node, NodeInput, NodeOutput, RunContext, hookimpl


def _colour(value: str) -> str:
    # Checked here, not in run: a bad value is the caller's INVALID_INPUT naming the
    # field, never a drawing error (GENERATION_FAILED) halfway through the run.
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"must be a PIL colour name or #rrggbb, got {value[:40]!r}") from None
    return value


class CheckerboardInput(NodeInput):
    """Checkerboard input."""

    size: int = Field(default=64, ge=8, le=1024, title="Size", description="Side in pixels.")
    squares: int = Field(default=8, ge=1, le=64, title="Squares", description="Per side.")
    colour: Annotated[str, AfterValidator(_colour)] = Field(
        default="black", title="Colour", description="Any PIL colour name."
    )


class CheckerboardOutput(NodeOutput):
    """Checkerboard output."""

    image: ImageRef = Field(title="Image", description="Workspace file reference.")


class Checkerboard(Node[CheckerboardInput, CheckerboardOutput]):
    id = "checkerboard"
    version = "0.1.0"
    title = "Checkerboard"
    description = "Draws a checkerboard: a test pattern for downstream image nodes."
    category = "utility"

    def run(self, inputs: CheckerboardInput, ctx: RunContext) -> CheckerboardOutput:
        image = Image.new("RGB", (inputs.size, inputs.size), "white")
        draw, cell = ImageDraw.Draw(image), inputs.size / inputs.squares
        for i in range(inputs.squares):
            for j in range((i % 2), inputs.squares, 2):
                draw.rectangle(
                    [j * cell, i * cell, (j + 1) * cell - 1, (i + 1) * cell - 1], fill=inputs.colour
                )
        return CheckerboardOutput(image=ctx.images.save(image, inputs.model_dump()))


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(Checkerboard)


def _draw(args: argparse.Namespace, out: TextIO) -> int:
    """``imagenodes checkerboard``: run the node on the command's host, print the result."""
    from imagenodes.cli import open_host  # the global --workspace/--connections flags

    inputs = {"size": args.size, "squares": args.squares, "colour": args.colour}
    result = open_host(args).run(Checkerboard.id, inputs)
    json.dump(result.to_dict(), out, indent=2)
    out.write("\n")
    return 0


@hookimpl
def register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("checkerboard", help="draw a checkerboard into the workspace")
    p.add_argument("--size", type=int, default=64, help="side in pixels")
    p.add_argument("--squares", type=int, default=8, help="squares per side")
    p.add_argument("--colour", default="black", help="any PIL colour name")
    p.set_defaults(func=_draw)
