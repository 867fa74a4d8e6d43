"""Flows: run the seed's step lists (``$.input``/``$.results`` references, ``@Map``)
over any registered nodes.  See :mod:`imagenodes.flows.runner` and docs/flows.md."""

from __future__ import annotations

from imagenodes.flows.model import FlowDocument, FlowStep, parse_document
from imagenodes.flows.runner import (
    FlowResult,
    FlowRunner,
    StepRecord,
    camel_to_snake,
    load_flow,
    parse_flow,
    run_flow,
)

__all__ = [
    "FlowDocument",
    "FlowResult",
    "FlowRunner",
    "FlowStep",
    "StepRecord",
    "camel_to_snake",
    "load_flow",
    "parse_document",
    "parse_flow",
    "run_flow",
]
