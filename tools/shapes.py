"""The domain of the embedded default model: coloured shapes on plain backgrounds.

The embedded model is a tiny text-to-image StableDiffusion pipeline trained on
this module's synthetic images. Keeping the domain in one importable place means
that training (``tools/train_embedded_model.py``), evaluation
(``tools/eval_embedded_model.py``) and the test-suite all agree on the palette,
the prompt wording, the held-out combinations and how an image is judged.

Everything here is deterministic and pixel-based: ``judge`` does not use a
classifier, so a test can assert what a generated image shows without any model
beyond the one under test.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from imagenodes.engine.aspect import RATIOS, native_size
from imagenodes.engine.profiles import EMBEDDED

# Saturated, mutually distant RGB values: the judge snaps a median colour to the
# nearest entry, so the palette entries must be far apart (the closest pair,
# red/orange, is still > 110 apart in RGB space).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 180, 40),
    "blue": (20, 50, 230),
    "yellow": (250, 235, 20),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "orange": (255, 135, 0),
    "purple": (140, 20, 180),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Aspect-ratio buckets of the embedded model (width, height) by ratio, all close to
# the 64x64 pixel budget (4032-4224 px): 1:1 64x64, 3:4 56x72, 4:3 72x56, 9:16
# 48x88, 16:9 88x48. Every side is a multiple of 8: the VAE divides by 4 and the
# UNet down-samples the latent once more by 2, so each latent side must be even.
# Training draws each batch from one bucket (tensors stack). The engine's
# ``embedded`` profile declares them, and this table is read from it -- the bucket
# the engine picks for each ratio -- so the model is trained at exactly the sizes
# it is asked for.
BUCKETS: dict[str, tuple[int, int]] = {
    name: native_size(rw, rh, EMBEDDED) for name, (rw, rh) in RATIOS.items()
}

# Fill ratio (shape pixels / bounding-box area) of the ideal shapes are
# circle pi/4 ~ 0.785, square 1.0, triangle 0.5; the judge's thresholds are the
# midpoints between neighbours ((0.5 + 0.785) / 2, (0.785 + 1.0) / 2), so a
# slightly rounded square or a slightly lumpy circle is still classed sensibly.
_TRIANGLE_MAX_FILL = 0.64
_CIRCLE_MAX_FILL = 0.89

# Width of the border ring that ``render`` keeps free of the shape and that
# ``judge`` reads the background from.
_BORDER = 4
_JUDGE_RING = 3
_SUPERSAMPLE = 4


def prompt_for(shape: str, colour: str, bg: str) -> str:
    """Return the one prompt wording the model is trained on for this combination."""
    return f"a {colour} {shape} on a {bg} background"


def render(
    shape: str,
    colour: str,
    bg: str,
    rng: random.Random | np.random.Generator,
    size: int | tuple[int, int] = 64,
) -> Image.Image:
    """Render one anti-aliased training image of ``size`` (a side, or ``(width, height)``).

    The shape gets a random size (see below) and a random position anywhere in the canvas,
    also along the long side of a non-square bucket, but always leaves a clean
    ``_BORDER``-pixel frame of background so that ``judge`` can read the
    background colour from the border. Anti-aliasing comes from drawing at
    ``_SUPERSAMPLE`` times the resolution and downsampling with a box filter, so
    that edges look like a real (smooth) image.

    ``rng`` may be a ``random.Random`` or a ``numpy.random.Generator``; only
    uniform draws are used (a square ``size`` draws exactly what v1-v3 drew).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    fg_rgb, bg_rgb = COLOURS[colour], COLOURS[bg]
    width, height = (size, size) if isinstance(size, int) else size

    def uniform(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    short = min(width, height)
    # The border follows the pixel budget (4 px for every ~64^2 bucket).
    border = max(2, round(_BORDER * (width * height) ** 0.5 / 64))
    avail_x, avail_y = width - 2 * border, height - 2 * border
    # Shape size follows the pixel budget (38-78 % of sqrt(w*h), exactly v1-v3's
    # range at 64x64), with the top of the range cut to what the short side
    # holds: a narrow bucket gets v3's absolute shape sizes (>= 24 px), not
    # smaller ones -- v3's VAE turned a sixth of the 18-px squares into circles.
    budget = (width * height) ** 0.5
    # (Drawn inside the cut range rather than clipped, so sizes do not pile up at
    # the top.)
    extent = uniform(0.38 * budget, min(0.78 * budget, short - 2 * border))
    if shape == "triangle":
        w = extent
        h = extent * uniform(0.8, 1.0)
    else:
        w = h = extent
    x0 = border + uniform(0.0, avail_x - w)
    y0 = border + uniform(0.0, avail_y - h)

    s = _SUPERSAMPLE
    big = Image.new("RGB", (width * s, height * s), bg_rgb)
    draw = ImageDraw.Draw(big)
    box = (x0 * s, y0 * s, (x0 + w) * s - 1, (y0 + h) * s - 1)
    if shape == "circle":
        draw.ellipse(box, fill=fg_rgb)
    elif shape == "square":
        draw.rectangle(box, fill=fg_rgb)
    else:
        apex = ((x0 + w / 2) * s, y0 * s)
        draw.polygon([apex, (box[0], box[3]), (box[2], box[3])], fill=fg_rgb)
    return big.resize((width, height), Image.Resampling.BOX)


def _snap(rgb: np.ndarray) -> str:
    """Name of the palette colour nearest (Euclidean RGB) to ``rgb``."""
    names = list(COLOURS)
    pal = np.array([COLOURS[n] for n in names], dtype=np.float64)
    d = ((pal - rgb[None, :].astype(np.float64)) ** 2).sum(axis=1)
    return names[int(d.argmin())]


# A blob counts as a shape of its own (for ``judge``'s ``count``) from this share
# of the image area on: 41 px at 64x64, well below the smallest rendered shape
# (a 18-px triangle, ~160 px) and well above the few stray pixels a generated
# image can carry.
_MIN_BLOB_SHARE = 0.01


def _largest_component(mask: np.ndarray, min_blob: int = 0) -> tuple[np.ndarray, int]:
    """The largest 4-connected component of a boolean mask, and how many blobs have ``min_blob`` px.

    Generated images can carry a few stray off-background pixels; they would
    inflate the bounding box and so the fill ratio, so only the main blob is
    measured. The count is what tells one shape from two (or a shape from a
    shape with a detached fragment): the failure of a model asked for a size
    it was not trained at is repeating its subject, which the largest blob
    alone would hide.
    """
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best_label, best_size, current, big = 0, 0, 0, 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        current += 1
        labels[y, x] = current
        queue: deque[tuple[int, int]] = deque([(int(y), int(x))])
        count = 0
        while queue:
            cy, cx = queue.popleft()
            count += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if count > best_size:
            best_label, best_size = current, count
        if count >= min_blob:
            big += 1
    return (labels == best_label if best_label else mask), big


def judge(image: Image.Image | np.ndarray) -> dict[str, Any]:
    """Judge background colour, shape colour and shape type from pixels alone.

    * background: median of the outer ``_JUDGE_RING``-pixel ring, snapped to the
      nearest palette colour (``render`` keeps that ring free of the shape);
    * shape colour: median of the pixels that differ clearly from the border
      colour, snapped to the palette;
    * shape: the shape mask is every pixel closer to the shape colour than to the
      border colour (i.e. at least half covered, which makes anti-aliased edges
      count correctly), restricted to its largest connected blob; its fill ratio
      inside its bounding box separates triangle (~0.5), circle (~0.785) and
      square (~1.0).

    Returns ``{"background": name, "colour": name, "shape": name}`` plus the
    measured ``"fill"`` ratio and ``"count"``, the number of shape blobs of at
    least ``_MIN_BLOB_SHARE`` of the image area (``None`` / ``"shape": None`` /
    count 0 when there is no shape at all). Works on any width and height.
    """
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    else:
        arr = np.asarray(image, dtype=np.float64)[..., :3]
    r = _JUDGE_RING
    ring = np.concatenate(
        [
            arr[:r].reshape(-1, 3),
            arr[-r:].reshape(-1, 3),
            arr[r:-r, :r].reshape(-1, 3),
            arr[r:-r, -r:].reshape(-1, 3),
        ]
    )
    border_rgb = np.median(ring, axis=0)
    background = _snap(border_rgb)

    dist = np.sqrt(((arr - border_rgb) ** 2).sum(axis=-1))
    differing = dist > 60.0
    if differing.sum() < 4:
        return {"background": background, "colour": None, "shape": None, "fill": None, "count": 0}
    colour_rgb = np.median(arr[differing], axis=0)
    colour = _snap(colour_rgb)

    # Project each pixel on the border->shape colour axis; >= 0.5 means the pixel
    # is at least half shape.
    axis = colour_rgb - border_rgb
    denom = float((axis**2).sum())
    if denom < 1e-6:
        return {
            "background": background,
            "colour": colour,
            "shape": None,
            "fill": None,
            "count": 0,
        }
    t = ((arr - border_rgb) @ axis) / denom
    min_blob = max(1, round(_MIN_BLOB_SHARE * arr.shape[0] * arr.shape[1]))
    mask, count = _largest_component(t >= 0.5, min_blob)
    ys, xs = np.nonzero(mask)
    area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum()) / float(area)
    if fill < _TRIANGLE_MAX_FILL:
        shape = "triangle"
    elif fill < _CIRCLE_MAX_FILL:
        shape = "circle"
    else:
        shape = "square"
    return {
        "background": background,
        "colour": colour,
        "shape": shape,
        "fill": fill,
        "count": count,
    }


def adherence(
    combos: Sequence[tuple[str, str, str]], verdicts: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Share of images whose judged background, shape colour and shape type match the prompt.

    ``one_right`` is the strict score: right background, colour and shape *and*
    exactly one shape blob (``judge``'s ``count``), i.e. the image is what the
    prompt asked for. One scoring rule for the CI test, the training script's
    sampler selection and the evaluation script, so the model card and the test
    cannot drift apart.
    """
    pairs = list(zip(combos, verdicts, strict=True))
    n = len(pairs)
    return {
        "background": sum(v["background"] == bg for (_, _, bg), v in pairs) / n,
        "colour": sum(v["colour"] == colour for (_, colour, _), v in pairs) / n,
        "shape": sum(v["shape"] == shape for (shape, _, _), v in pairs) / n,
        "one_right": sum(
            (v["shape"], v["colour"], v["background"]) == combo and v.get("count") == 1
            for combo, v in pairs
        )
        / n,
    }


def heldout_prompts() -> list[tuple[str, str, str]]:
    """The 48 (shape, colour, bg) combinations that training never sees.

    The model is evaluated on these to measure compositional generalisation, not
    memorisation. For shape number ``i`` and colour number ``j`` the held-out
    backgrounds are colours ``j + 2i + 1`` and ``j + 2i + 2`` (mod 8). So:

    * every (colour, bg) pair is held out for at most one shape, and is seen in
      training with the other shapes;
    * every shape is trained with every colour on five backgrounds;
    * every colour appears in training both as a shape colour and as a background.
    """
    names = list(COLOURS)
    n = len(names)
    out: list[tuple[str, str, str]] = []
    for i, shape in enumerate(SHAPES):
        for j, colour in enumerate(names):
            for k in (1, 2):
                out.append((shape, colour, names[(j + 2 * i + k) % n]))
    return out


def training_combos() -> list[tuple[str, str, str]]:
    """All (shape, colour, bg) combinations with colour != bg minus the held-out ones."""
    held = set(heldout_prompts())
    return [
        (s, c, b)
        for s in SHAPES
        for c in COLOURS
        for b in COLOURS
        if c != b and (s, c, b) not in held
    ]
