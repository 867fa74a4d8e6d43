"""Executors: where a job of the service — a node job or a flow job — generates.

:class:`LocalExecutor` runs it on the service's own host (the default), in the
service's worker thread itself; :class:`~imagenodes.server.ray_executor.RayExecutor`
on replicas of a Ray cluster.  Both take a :class:`JobRun` (plain data, so it crosses
to a replica as is) and return the run's JSON-ready result;
:func:`imagenodes.server.service.open_executor` picks one from the settings.  A flow
job goes through the same seam as a node job, so under ``--executor ray`` a flow's
steps generate on the replicas too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from imagenodes.registry.context import CancelToken
from imagenodes.registry.events import Event

if TYPE_CHECKING:
    from imagenodes.registry.host import Host


@dataclass(frozen=True)
class JobRun:
    """One job as an executor runs it, plain data (it crosses to a Ray replica as is).

    A node job is ``Host.run``'s arguments; a flow job names ``node="flow"`` and
    carries the flow document in ``flow`` and the flow's input in ``inputs``.
    """

    kind: Literal["node", "flow"]
    node: str
    inputs: dict[str, Any]
    run_id: str
    connections: Any = None
    timeout: float | None = None
    flow: dict[str, Any] | None = None


class Executor(Protocol):
    """Where a job's generation runs: in this process (:class:`LocalExecutor`) or
    on a Ray cluster (:class:`~imagenodes.server.ray_executor.RayExecutor`).

    ``run`` has ``Host.run``'s contract: typed events through ``on_event``, the
    cooperative ``token`` honoured at every step, coded errors (CANCELLED when the token
    stopped it), outputs staged and committed to the workspace.  It returns the run's
    JSON-ready result; only references cross a process boundary.
    """

    def start(self) -> None: ...

    def run(
        self, job: JobRun, *, on_event: Callable[[Event], None], token: CancelToken
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The default: the job runs on this process's host (its pipelines stay warm), in
    the calling worker thread."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def start(self) -> None:
        pass

    def run(
        self, job: JobRun, *, on_event: Callable[[Event], None], token: CancelToken
    ) -> dict[str, Any]:
        return run_on_host(self.host, job, on_event=on_event, token=token)

    def close(self) -> None:
        pass


def run_on_host(
    host: Host, job: JobRun, *, on_event: Callable[[Event], None], token: CancelToken
) -> dict[str, Any]:
    """The job on ``host`` in the calling thread, as the JSON-ready result every
    executor returns (a node's ``RunResult.to_dict()`` with its notices, or a flow's
    ``FlowResult.to_dict()``)."""
    if job.kind == "flow":
        from imagenodes.flows.runner import FlowRunner

        flow_result = FlowRunner(host).run(
            job.flow or {},
            job.inputs,
            on_event=on_event,
            connections=job.connections,
            token=token,
            inline=True,
        )
        return dict(flow_result.to_dict())
    result = host.run(
        job.node,
        job.inputs,
        connections=job.connections,
        on_event=on_event,
        run_id=job.run_id,
        token=token,
        timeout=job.timeout,
        inline=True,
    )
    out = result.to_dict()
    out["notices"] = result.notices
    return out
