"""The service's HTTP routes, one router per resource (built by ``create_app``).

Each ``router(...)`` function takes what its routes need (the service, the settings,
the request types built for this host's nodes) and returns a FastAPI ``APIRouter``.
Handlers are async and never call the store or the workspace on the event loop: store
reads go to the service's bounded ``read`` pool, slow work (uploads, file reads) to its
``work`` pool (:mod:`imagenodes.server.pools`), anything else through
``asyncio.to_thread``.
"""
