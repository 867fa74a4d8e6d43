"""The aspect-ratio table of seed 000, resolved against a model profile.

``_HD`` means 1024 px and ``_FHD`` 1920 px on the longest side, a plain ratio the
model's native long side; the short side is rounded to the model's size multiple.
Sizes above the model's maximum are then capped (a notice), so a 64-px model asked
for ``9:16_FHD`` gets the largest size it supports in that shape, not an error.
"""

from __future__ import annotations

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


def nominal_size(
    aspect: str, profile: ModelProfile, *, long_side: int | None = None
) -> tuple[int, int]:
    """(width, height) the table gives before the model's maximum is applied.

    ``long_side`` overrides the tier's (``image_generation``'s 1K/2K sizes); without
    either the model's native resolution is the long side.
    """
    (rw, rh), tier_side = parse_aspect(aspect)
    long_side = long_side or tier_side or profile.native_resolution
    if rw >= rh:
        return long_side, round_to_multiple(long_side * rh / rw, profile.size_multiple)
    return round_to_multiple(long_side * rw / rh, profile.size_multiple), long_side


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
    """The whole table for one profile (docs and the catalog use this)."""
    rows = []
    for aspect in ASPECT_RATIOS:
        nw, nh = nominal_size(aspect, profile)
        w, h, notes = fit_size(nw, nh, profile)
        rows.append(
            {
                "aspect_ratio": aspect,
                "nominal": f"{nw}x{nh}",
                "applied": f"{w}x{h}",
                "capped": any(n.code == nc.SIZE_CAPPED for n in notes),
            }
        )
    return rows
