"""ComfyUI's protocol under ``/comfy`` (docs/comfyui.md).

* :mod:`.v1` — ComfyUI's own server routes (``/prompt``, ``/object_info``, ``/view``,
  uploads, queue, history, ``/api/jobs``, the ``/ws`` socket), each also under
  ``/comfy/api/…`` as ComfyUI registers every route twice;
* :mod:`.frontend` — what the ComfyUI editor (PyPI ``comfyui-frontend-package``) needs
  to boot and keep a user's work, and its static files at ``/comfy/``;
* :mod:`.v2` — Comfy API v2 (``/comfy/api/v2/jobs``, ``/comfy/api/v2/assets``), the
  protocol of PyPI ``comfy-sdk``.

A prompt is a flow job (:func:`imagenodes.flows.comfy.graph_to_flow` turns the
API-format graph into a seed-003 flow), so it is a job of ``GET /v1/jobs`` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import APIRouter

    from imagenodes.server.service import JobService
    from imagenodes.server.settings import ServerSettings

#: Where the protocol is mounted (the editor derives its API base from its own path).
PREFIX = "/comfy"


def routers(service: JobService, settings: ServerSettings) -> list[APIRouter]:
    """Every ``/comfy`` router, the editor's static files last (a catch-all)."""
    from imagenodes.server.protocols.comfy import frontend, v1, v2

    return [
        v1.router(service, settings),
        v2.router(service, settings),
        *frontend.routers(service, settings),
    ]
