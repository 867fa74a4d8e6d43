"""Flows: run the seed's step lists (``$.input``/``$.results`` references, ``@Map``)
over any registered nodes.  See :mod:`imagenodes.flows.runner` and docs/flows.md."""

from __future__ import annotations

from imagenodes.flows.runner import (
    FlowResult,
    FlowRunner,
    StepRecord,
    camel_to_snake,
    load_flow,
    run_flow,
)

__all__ = ["FlowResult", "FlowRunner", "StepRecord", "camel_to_snake", "load_flow", "run_flow"]
