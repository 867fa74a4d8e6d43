"""generate_image (seed 004, the MCP "generate-image" tool).

The output is the seed's shape: ``content`` holds one ``{type: "image", data: <base64
PNG>, mimeType, metadata}`` item whose metadata carries *measured* times:

* ``initTime`` — resolving the connection's model and loading (or finding) its pipeline,
* ``generationTime`` — the denoising call(s) plus the resize to the requested size,
* ``encodingTime`` — PNG encoding and base64 of the returned data,
* ``latencyMs`` — from the node's start until the returned data was ready.

Any width/height in 1–2048 is accepted: the image is generated at the nearest size
the model can produce (its size multiple, capped at its maximum) and resized to
exactly the requested size, with notices saying so.  ``metadata.steps`` and
``guidance_scale`` are the values the model actually ran with (a family with a
narrower range clamps them, again with a notice).

Sessions (``create_session`` / ``session_history`` nodes in :mod:`.sessions`,
``host.sessions``) record every generation of a session with its files; an unknown
``sessionId`` is INVALID_SESSION before anything is loaded.  A model that cannot be
resolved or loaded is ENGINE_NOT_INITIALIZED with the underlying reason, and the
node's 90 s timeout (enforced by the host) is GENERATION_TIMEOUT.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from imagenodes.nodes.common import PIXELML_CONNECTION
from imagenodes.sdk import (
    MAX_SEED,
    ConnectionConfigError,
    EngineNotInitialized,
    Exact,
    ImageJob,
    ImageNodesError,
    ImageRef,
    Node,
    NodeInput,
    NodeOutput,
    Prompt,
    RunContext,
    hookimpl,
)

#: The seed's hard limit on one generation.
TIMEOUT_S = 90


class GenerateImageInput(NodeInput):
    """Generate one image from a text prompt (seed 004's input schema)."""

    prompt: Prompt = Field(title="Prompt", description="Image description.")
    width: int = Field(
        default=512,
        ge=1,
        le=2048,
        title="Width",
        description="Output width in pixels, 1–2048. Sizes the model cannot produce directly "
        "are generated at the nearest supported size and resized.",
    )
    height: int = Field(
        default=512,
        ge=1,
        le=2048,
        title="Height",
        description="Output height in pixels, 1–2048 (see width).",
    )
    steps: int = Field(
        default=20,
        ge=1,
        le=100,
        title="Steps",
        description="Sampling steps, 1–100 (more steps = higher quality, slower).",
    )
    guidance_scale: float = Field(
        default=7.5,
        ge=1,
        le=20,
        title="Guidance scale",
        description="1–20 (higher = closer to the prompt).",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        title="Seed",
        description="32-bit seed for reproducible results; random when empty. The seed used "
        "is returned.",
    )
    sessionId: str | None = Field(
        default=None,
        title="Session id",
        description="Append this generation to a session's iteration history (the session "
        "must exist: create_session).",
    )


class Profiling(NodeOutput):
    initTime: float = Field(description="ms resolving and loading the model.")
    generationTime: float = Field(description="ms denoising and resizing.")
    encodingTime: float = Field(description="ms encoding the PNG and its base64.")


class ImageMetadata(NodeOutput):
    latencyMs: float
    profiling: Profiling
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float


class ImageContent(NodeOutput):
    type: Literal["image"] = "image"
    data: str = Field(description="Base64 encoded PNG.")
    mimeType: Literal["image/png"] = "image/png"
    metadata: ImageMetadata


class GenerateImageOutput(NodeOutput):
    """The seed's ``content`` list, plus the image's workspace reference."""

    content: list[ImageContent]
    images: list[ImageRef] = Field(description="Workspace references of the images in content.")
    sessionId: str | None = None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class GenerateImage(Node[GenerateImageInput, GenerateImageOutput]):
    id = "generate_image"
    version = "1.0.0"
    title = "Generate Image"
    description = (
        "Generates an image from a text prompt with the configured diffusers engine. "
        "Custom dimensions, sampling steps, guidance scale and deterministic generation "
        "via seed; returns a base64 PNG with timing metadata."
    )
    category = "image"
    connections = (PIXELML_CONNECTION,)
    #: ``content`` items are MCP image content already; ``images`` their references.
    image_content = ("content", "images")
    field_codes: ClassVar[dict[str, str]] = {
        "prompt": "EMPTY_PROMPT",
        "width": "INVALID_DIMENSIONS",
        "height": "INVALID_DIMENSIONS",
        "steps": "INVALID_STEPS",
        "guidance_scale": "INVALID_GUIDANCE_SCALE",
    }
    # Seed 004's ranges, not the shared texts' (guidance 0–15, 50 steps).
    solutions: ClassVar[dict[str, str]] = {
        "INVALID_DIMENSIONS": "Set width and height between 1 and 2048 (default 512)",
        "INVALID_STEPS": "Set steps between 1 and 100 (20 for speed, 50+ for high quality)",
        "INVALID_GUIDANCE_SCALE": "Set guidance_scale between 1 and 20 (7-9 usually balances "
        "prompt adherence with creativity)",
        "GENERATION_TIMEOUT": "Generation is limited to 90 seconds: reduce steps or dimensions",
    }
    timeout = TIMEOUT_S

    def run(self, inputs: GenerateImageInput, ctx: RunContext) -> GenerateImageOutput:
        started = time.perf_counter()
        sessions = ctx.library.sessions
        if inputs.sessionId is not None:
            sessions.get(inputs.sessionId)  # INVALID_SESSION before anything loads
        want = (inputs.width, inputs.height)
        job = ImageJob.of(
            inputs,
            prompt=inputs.prompt,
            guidance_scale=inputs.guidance_scale,
            steps=inputs.steps,
            size=Exact(*want, resample=True),
            seed=inputs.seed,
        )
        before_s = time.perf_counter() - started
        try:
            generation = ctx.models.generate(job)
        except ConnectionConfigError as exc:  # the model cannot be routed or loaded
            raise _not_initialized(exc) from None
        image = generation.images[0]
        ctx.util.check()
        effective = generation.params
        seed = generation.seeds[0]
        gen_w, gen_h = generation.generated_size
        meta: dict[str, Any] = {
            "prompt": inputs.prompt,
            "seed": seed,
            "width": want[0],
            "height": want[1],
            "generated_size": f"{gen_w}x{gen_h}",
            "steps": effective["steps"],
            "guidance_scale": effective["guidance_scale"],
            "model": generation.model.name,
            "session_id": inputs.sessionId,
        }
        encode_start = time.perf_counter()
        png = ctx.images.encode(image, meta)
        data = base64.b64encode(png).decode("ascii")
        encode_s = time.perf_counter() - encode_start
        latency_s = time.perf_counter() - started
        ref = ctx.images.save(png, name="image-0.png")  # the very bytes returned inline

        timings = generation.timings
        metadata = ImageMetadata(
            latencyMs=_ms(latency_s),
            profiling=Profiling(
                initTime=round(
                    before_s * 1000 + timings.get("route_ms", 0.0) + timings.get("load_ms", 0.0),
                    1,
                ),
                generationTime=round(timings.get("generate_ms", 0.0), 1),
                encodingTime=_ms(encode_s),
            ),
            seed=seed,
            width=want[0],
            height=want[1],
            steps=int(effective["steps"] or inputs.steps),
            guidance_scale=float(
                effective["guidance_scale"]
                if effective["guidance_scale"] is not None
                else inputs.guidance_scale
            ),
        )
        if inputs.sessionId is not None:
            sessions.append(
                inputs.sessionId,
                {
                    "run_id": ctx.run_id,
                    "prompt": inputs.prompt,
                    "parameters": {
                        "width": want[0],
                        "height": want[1],
                        "steps": metadata.steps,
                        "guidance_scale": metadata.guidance_scale,
                        "seed": inputs.seed,
                    },
                    "seed": seed,
                    "image": ref,
                    "model": generation.model.name,
                    "latencyMs": metadata.latencyMs,
                },
            )
        return GenerateImageOutput(
            content=[ImageContent(data=data, metadata=metadata)],
            images=[ref],
            sessionId=inputs.sessionId,
        )


def _not_initialized(exc: ImageNodesError) -> EngineNotInitialized:
    return EngineNotInitialized(
        f"the engine could not be initialised: {exc.message}",
        field=exc.field or "model",
        details={"cause": exc.code, **exc.details},
    )


@hookimpl
def register_nodes(register: Callable[[type], None]) -> None:
    register(GenerateImage)
