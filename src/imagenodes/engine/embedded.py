"""The embedded default model's location, as the engine sees it (see imagenodes.assets)."""

from __future__ import annotations

from imagenodes.assets import EMBEDDED_MODEL_NAME, embedded_model_path

__all__ = ["EMBEDDED_MODEL_NAME", "embedded_model_path"]
