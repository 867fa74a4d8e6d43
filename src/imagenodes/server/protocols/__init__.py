"""Other protocols on the one service: each is a set of routers over the same
:class:`~imagenodes.server.service.JobService` — the same queue, executor, auth,
Origin and trusted-host rules — whose messages are projections of the one typed event
model (:mod:`imagenodes.registry.events`), never a second event system."""
