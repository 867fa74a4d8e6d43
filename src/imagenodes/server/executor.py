"""Executors: where a node job of the service generates.

:class:`LocalExecutor` runs it on the service's own host (the default);
:class:`~imagenodes.server.ray_executor.RayExecutor` on replicas of a Ray cluster.  Both
take a :class:`NodeRun` (plain data, so it crosses to a replica as is) and return the
run's JSON-ready result; ``service.open_executor`` picks one from ``--executor``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event

if TYPE_CHECKING:
    from imagenodes.registry.host import Host


@dataclass(frozen=True)
class NodeRun:
    """One node job as an executor runs it: ``Host.run``'s arguments, plain data (it
    crosses to a Ray replica as is)."""

    node: str
    inputs: dict[str, Any]
    run_id: str
    connections: Any = None
    timeout: float | None = None


class Executor(Protocol):
    """Where a node job's generation runs: in this process (:class:`LocalExecutor`) or
    on a Ray cluster (:class:`~imagenodes.server.ray_executor.RayExecutor`).

    ``run`` has ``Host.run``'s contract: library events through ``on_event``, the
    cooperative ``token`` honoured at every step, coded errors (CANCELLED when the token
    stopped it), outputs staged and committed to the workspace.  It returns the run's
    ``RunResult.to_dict()``; only references cross a process boundary.
    """

    def start(self) -> None: ...

    def run(
        self, job: NodeRun, *, on_event: Callable[[Event], None], token: CancelToken
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The default: ``Host.run`` on this process's host (its pipelines stay warm)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def start(self) -> None:
        pass

    def run(
        self, job: NodeRun, *, on_event: Callable[[Event], None], token: CancelToken
    ) -> dict[str, Any]:
        return run_on_host(self.host, job, on_event=on_event, token=token)

    def close(self) -> None:
        pass


def run_on_host(
    host: Host, job: NodeRun, *, on_event: Callable[[Event], None], token: CancelToken
) -> dict[str, Any]:
    """``Host.run`` of ``job``, as the JSON-ready result every executor returns."""
    result = host.run(
        job.node,
        job.inputs,
        connections=job.connections,
        on_event=on_event,
        run_id=job.run_id,
        token=token,
        timeout=job.timeout,
    )
    out = result.to_dict()
    out["notices"] = result.notices
    return out
