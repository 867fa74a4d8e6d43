"""Sizes: seed 000's aspect table, and where a request is generated and delivered.

``_HD`` means 1024 px and ``_FHD`` 1920 px on the longest side, a plain ratio the
model's native long side; the short side is rounded to a multiple of 8.

A model draws well only near its own size: SD 1.5 asked for 1024² repeats its
subject, the embedded model asked for 144×256 draws four triangles.  So the size
policy (connection setting ``size_policy``) separates the generated size from the
delivered one:

* ``upscale`` (default): generate at the model's size for the shape — its training
  bucket, or its pixel budget in that shape — and resize to exactly the documented
  size (``SIZE_UPSCALED``, or ``SIZE_RESAMPLED`` when it shrinks).  A request the
  model can make directly (within budget and maximum, and no bucket to prefer) is
  generated as asked.
* ``cap``: the 0.1 behaviour — above the maximum, scale down keeping the shape and
  deliver that (``SIZE_CAPPED``).
* ``native``: ignore the tier; generate and deliver the model's own size for the
  shape (``SIZE_NATIVE``).

Every plan is at most one notice: requested → generated → delivered, and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from imagenodes.engine import notices as nc
from imagenodes.engine.job import TIERS
from imagenodes.engine.notices import Notice
from imagenodes.engine.profiles import ModelProfile

RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "3:4": (3, 4),
    "4:3": (4, 3),
    "9:16": (9, 16),
    "16:9": (16, 9),
}
ASPECT_RATIOS: tuple[str, ...] = tuple(f"{ratio}{suffix}" for suffix in TIERS for ratio in RATIOS)


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple (halves round up), never below one multiple."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def parse_aspect(aspect: str) -> tuple[tuple[int, int], int | None]:
    """Split ``"16:9_HD"`` into ``((16, 9), 1024)``; KeyError when unknown."""
    for suffix, long_side in TIERS.items():
        if suffix and aspect.endswith(suffix):
            return RATIOS[aspect[: -len(suffix)]], long_side
    return RATIOS[aspect], None


#: Delivered sizes are multiples of this, whatever the family (the seed's sizes:
#: 9:16_HD = 576x1024, 16:9_FHD = 1920x1080).
DELIVERY_MULTIPLE = 8

#: A request up to this many times the family's pixel budget is generated as asked.
BUDGET_SLACK = 1.5

SizePolicy = Literal["upscale", "cap", "native"]
SIZE_POLICIES: tuple[str, ...] = ("upscale", "cap", "native")


def nominal_size(
    aspect: str,
    profile: ModelProfile,
    *,
    long_side: int | None = None,
    multiple: int | None = None,
) -> tuple[int, int]:
    """(width, height) the table gives before the model's maximum is applied.

    ``long_side`` overrides the tier's (``image_generation``'s 1K/2K sizes); without
    either the model's native resolution is the long side.  The short side is
    rounded to ``multiple`` (default the profile's).
    """
    (rw, rh), tier_side = parse_aspect(aspect)
    long_side = long_side or tier_side or profile.native_resolution
    m = multiple or profile.size_multiple
    if rw >= rh:
        return long_side, round_to_multiple(long_side * rh / rw, m)
    return round_to_multiple(long_side * rw / rh, m), long_side


def native_size(width: int, height: int, profile: ModelProfile) -> tuple[int, int]:
    """The size the family draws best in the shape ``width``:``height``: the training
    bucket nearest in aspect ratio, else its pixel budget in that shape."""
    if profile.buckets:
        ratio = math.log(width / height)
        return min(profile.buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio))
    scale = math.sqrt(profile.budget / (width * height))
    m = profile.size_multiple
    w = min(profile.max_resolution, round_to_multiple(width * scale, m))
    h = min(profile.max_resolution, round_to_multiple(height * scale, m))
    return w, h


@dataclass(frozen=True)
class SizePlan:
    """Generate at ``width`` x ``height``; deliver ``deliver`` (None: as generated)."""

    width: int
    height: int
    deliver: tuple[int, int] | None = None
    notices: list[Notice] = field(default_factory=list)


def plan_size(
    width: int,
    height: int,
    profile: ModelProfile,
    *,
    policy: str = "upscale",
    field: str = "size",
    bucketed: bool = False,
    exact: bool = False,
) -> SizePlan:
    """Where a request of ``width`` x ``height`` is generated and what is delivered.

    ``bucketed``: the size came from the aspect table (prefer the family's bucket for
    the shape even when the request is small).  ``exact``: deliver exactly the
    request (not rounded to a multiple of 8).  See the module docstring.
    """
    if policy == "cap":
        w, h, notes = fit_size(width, height, profile, field=field)
        if exact and (w, h) != (width, height):
            return SizePlan(w, h, (width, height), [_resized(width, height, w, h, profile, field)])
        return SizePlan(w, h, None, notes)
    if policy == "native":
        w, h = native_size(width, height, profile)
        if (w, h) == (width, height):
            return SizePlan(w, h)
        note = Notice(
            nc.SIZE_NATIVE,
            field,
            f"{width}x{height}",
            f"{w}x{h}",
            f"size_policy 'native': {profile.title} generates and delivers its own size for "
            "this shape",
        )
        return SizePlan(w, h, None, [note])
    if policy != "upscale":
        raise ValueError(f"size_policy must be one of {', '.join(SIZE_POLICIES)}, got {policy!r}")
    target = (
        (width, height)
        if exact
        else (
            round_to_multiple(width, DELIVERY_MULTIPLE),
            round_to_multiple(height, DELIVERY_MULTIPLE),
        )
    )
    direct = (
        max(width, height) <= profile.max_resolution
        and width * height <= profile.budget * BUDGET_SLACK
        and not (bucketed and profile.buckets)
    )
    if direct:
        m = profile.size_multiple
        w, h = round_to_multiple(width, m), round_to_multiple(height, m)
    else:
        w, h = native_size(width, height, profile)
    if (w, h) == target:
        if target == (width, height):
            return SizePlan(w, h)
        note = Notice(
            nc.SIZE_ROUNDED,
            field,
            f"{width}x{height}",
            f"{w}x{h}",
            f"{profile.title} needs width and height in multiples of {profile.size_multiple}",
        )
        return SizePlan(w, h, None, [note])
    return SizePlan(w, h, target, [_resized(width, height, w, h, profile, field, target)])


def _resized(
    width: int,
    height: int,
    w: int,
    h: int,
    profile: ModelProfile,
    field: str,
    target: tuple[int, int] | None = None,
) -> Notice:
    """One notice for "generated at w x h, resized to the delivered size"."""
    dw, dh = target or (width, height)
    bigger = dw * dh > w * h
    where = (
        f"its {w}x{h} training bucket for this shape"
        if (w, h) in profile.buckets
        else f"{w}x{h}, the size it draws well for this shape"
    )
    return Notice(
        nc.SIZE_UPSCALED if bigger else nc.SIZE_RESAMPLED,
        field,
        f"{width}x{height}",
        f"{w}x{h} → {dw}x{dh}",
        f"{profile.title} generates at {where}; the image was "
        f"{'upscaled' if bigger else 'resized'} (Lanczos) to {dw}x{dh}",
    )


def fit_size(
    width: int, height: int, profile: ModelProfile, *, field: str = "size"
) -> tuple[int, int, list[Notice]]:
    """Cap to the profile's maximum (keeping the shape) and round to its multiple."""
    notices: list[Notice] = []
    w, h = width, height
    longest = max(w, h)
    if longest > profile.max_resolution:
        scale = profile.max_resolution / longest
        w2 = min(profile.max_resolution, round_to_multiple(w * scale, profile.size_multiple))
        h2 = min(profile.max_resolution, round_to_multiple(h * scale, profile.size_multiple))
        notices.append(
            Notice(
                nc.SIZE_CAPPED,
                field,
                f"{w}x{h}",
                f"{w2}x{h2}",
                f"{profile.title} supports at most {profile.max_resolution} px per side",
            )
        )
        return w2, h2, notices
    m = profile.size_multiple
    w2, h2 = round_to_multiple(w, m), round_to_multiple(h, m)
    if (w2, h2) != (w, h):
        notices.append(
            Notice(
                nc.SIZE_ROUNDED,
                field,
                f"{w}x{h}",
                f"{w2}x{h2}",
                f"{profile.title} needs width and height in multiples of {m}",
            )
        )
    return w2, h2, notices


def aspect_size(
    aspect: str, profile: ModelProfile, *, field: str = "aspect_ratio"
) -> tuple[int, int, list[Notice]]:
    """Size for an aspect ratio of the table on this profile, with notices."""
    w, h = nominal_size(aspect, profile)
    return fit_size(w, h, profile, field=field)


def aspect_table(profile: ModelProfile) -> list[dict[str, object]]:
    """The whole table for one profile (docs and tests use this): what is delivered and
    generated under the default ``upscale`` policy, and what ``cap`` would give."""
    rows = []
    for aspect in ASPECT_RATIOS:
        dw, dh = nominal_size(aspect, profile, multiple=DELIVERY_MULTIPLE)
        plan = plan_size(dw, dh, profile, policy="upscale", bucketed=True)
        cw, ch, notes = fit_size(*nominal_size(aspect, profile), profile)
        rows.append(
            {
                "aspect_ratio": aspect,
                "delivered": f"{dw}x{dh}",
                "generated": f"{plan.width}x{plan.height}",
                "cap": f"{cw}x{ch}",
                "capped": any(n.code == nc.SIZE_CAPPED for n in notes),
            }
        )
    return rows


def aspect_markdown(profile: ModelProfile) -> str:
    """``aspect_table`` as the Markdown table of docs/routing.md."""
    lines = [
        '| aspect ratio | delivered | generated (`upscale`, default) | `size_policy = "cap"` |',
        "|---|---|---|---|",
    ]
    for row in aspect_table(profile):
        cap = f"{row['cap']} (capped)" if row["capped"] else row["cap"]
        lines.append(f"| {row['aspect_ratio']} | {row['delivered']} | {row['generated']} | {cap} |")
    return "\n".join(lines)
