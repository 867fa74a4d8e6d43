"""A complete third-party node pack: one node, found through its entry point.

It uses only the package root (``imagenodes``), as every pack should, and generates
nothing: running it never imports torch.
"""

from collections.abc import Callable
from typing import Annotated

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
