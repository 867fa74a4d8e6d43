"""Hostile flow documents: what a client's flow may not make the server (or the library)
do — fetch a schema, spin on a regular expression, or build millions of values — and
the structural errors refused before anything is queued.

Each point is tested on the library (``FlowRunner``, ``imagenodes flow run``) and on a
real server (the ``serve`` fixture of tests/test_server.py: uvicorn on a free
127.0.0.1 port, httpx).  Nothing here generates: every flow is refused before its
first step, or queued on a paused queue.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from imagenodes import Host, ImageNodesError, Node, NodeInput, NodeOutput, hookimpl
from imagenodes.cli import main as cli_main
from imagenodes.flows import FlowRunner, parse_document
from imagenodes.flows.limits import MAX_STEP_VALUES, RUN_TIME_LIST_LIMITS
from tests.test_server import Served, serve  # noqa: F401  (serve: the uvicorn fixture)

EVIL = "^(a+)+$"  # 27 a's and a '!' took 5.5 s on Python's re, doubling per character


# -- a listener that records every request it gets ---------------------------------------------
class Listener:
    def __init__(self) -> None:
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                log.append(self.path)
                body = json.dumps({"type": "string"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def listener() -> Iterator[Listener]:
    served = Listener()
    yield served
    served.server.shutdown()
    served.server.server_close()


def _gen(step_id: str = "gen", prompt: Any = "$.input.prompt") -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "GenerateImageV2",
        "parameters": {"prompt": prompt, "negative_prompt": "", "aspect_ratio": "1:1"},
    }


def _with_input(schema: dict[str, Any]) -> dict[str, Any]:
    return {"input": {"type": "object", **schema}, "steps": [_gen()]}


def _pattern_flow(pattern: str = EVIL) -> dict[str, Any]:
    """A flow whose input ``text`` must match ``pattern`` (the step does not use it: a
    prompt is capped at 2000 characters, the texts here are longer)."""
    return {
        "input": {"type": "object", "properties": {"text": {"type": "string", "pattern": pattern}}},
        "steps": [_gen(prompt="a red circle")],
    }


# -- 1. the input schema fetches nothing --------------------------------------------------------
@pytest.fixture
def runner(make_host: Callable[..., Host]) -> FlowRunner:
    return FlowRunner(make_host(plugins=[NumbersPack()]))


def _refused(call: Callable[[], Any]) -> ImageNodesError:
    with pytest.raises(ImageNodesError) as info:
        call()
    return info.value


def test_a_remote_ref_is_refused_when_the_flow_is_parsed_and_never_fetched(
    runner: FlowRunner, listener: Listener
) -> None:
    remote = f"{listener.url}/s.json"
    for schema, field in [
        ({"$ref": remote}, "input.$ref"),
        ({"properties": {"prompt": {"$ref": remote}}}, "input.properties.prompt.$ref"),
        # relative to a remote $id: would be fetched from the listener too
        (
            {"$id": f"{listener.url}/root.json", "properties": {"p": {"$ref": "other.json"}}},
            "input.properties.p.$ref",
        ),
        # only reachable through a pointer into a keyword no dialect knows
        ({"$ref": "#/x-hidden", "x-hidden": {"$ref": remote}}, "input.x-hidden.$ref"),
        ({"$defs": {"a": {"$ref": remote}}}, "input.$defs.a.$ref"),
    ]:
        flow = {"input": schema, "steps": [_gen()]}
        err = _refused(lambda flow=flow: runner.preflight(flow, {"prompt": "a red circle"}))
        assert (err.code, err.field) == ("INVALID_FLOW", field), err
        assert "outside the flow document" in err.message
        assert _refused(lambda flow=flow: parse_document(flow)).code == "INVALID_FLOW"
    assert listener.requests == []


def test_a_file_ref_is_refused_not_opened(runner: FlowRunner) -> None:
    flow = _with_input({"properties": {"prompt": {"$ref": "file:///etc/passwd"}}})
    err = _refused(lambda: runner.run(flow, {"prompt": "root:x:0:0"}))
    assert (err.code, err.field) == ("INVALID_FLOW", "input.properties.prompt.$ref")
    assert err.details["reference"] == "file:///etc/passwd"


def test_refs_into_the_document_itself_still_work(runner: FlowRunner) -> None:
    for schema in [
        {"properties": {"prompt": {"$ref": "#/$defs/p"}}, "$defs": {"p": {"minLength": 4}}},
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"prompt": {"$ref": "#/definitions/p"}},
            "definitions": {"p": {"minLength": 4}},
        },
        {
            "$id": "https://example.invalid/flow.json",
            "properties": {"prompt": {"$ref": "#prompt"}},
            "$defs": {"p": {"$anchor": "prompt", "minLength": 4}},
        },
    ]:
        flow = _with_input(schema)
        runner.preflight(flow, {"prompt": "a red circle"})
        err = _refused(lambda flow=flow: runner.preflight(flow, {"prompt": "abc"}))
        assert (err.code, err.field) == ("INVALID_INPUT", "input.prompt")


def test_a_ref_to_nowhere_and_a_ref_cycle_are_invalid_flows(runner: FlowRunner) -> None:
    err = _refused(lambda: parse_document(_with_input({"properties": {"a": {"$ref": "#/no"}}})))
    assert (err.code, err.field) == ("INVALID_FLOW", "input.properties.a.$ref")
    cycle = {
        "input": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
        "steps": [_gen()],
    }
    err = _refused(lambda: runner.preflight(cycle, {"prompt": "x"}))
    assert (err.code, err.field) == ("INVALID_FLOW", "input")
    err = _refused(lambda: parse_document({"input": {"$schema": 5}, "steps": [_gen()]}))
    assert err.code == "INVALID_INPUT"  # a broken schema is as before: not a 500


# -- 2. patterns run in linear time ---------------------------------------------------------------
def test_an_evil_pattern_answers_in_linear_time(runner: FlowRunner) -> None:
    flow = _pattern_flow()
    start = time.monotonic()
    err = _refused(lambda: runner.preflight(flow, {"text": "a" * 10_000 + "!"}))
    assert (err.code, err.field) == ("INVALID_INPUT", "input.text")
    assert len(err.message) < 400  # the 10 000-character value is abridged
    runner.preflight(flow, {"text": "a" * 10_000})
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    "schema",
    [
        {"patternProperties": {EVIL: {"type": "string"}}, "additionalProperties": False},
        {"patternProperties": {EVIL: {"type": "string"}}, "unevaluatedProperties": False},
        {"propertyNames": {"pattern": EVIL}},
    ],
    ids=["additionalProperties", "unevaluatedProperties", "propertyNames"],
)
def test_property_name_patterns_run_in_linear_time(runner: FlowRunner, schema: dict) -> None:
    flow = {"input": schema, "steps": [_gen(prompt="x")]}
    start = time.monotonic()
    err = _refused(lambda: runner.preflight(flow, {"a" * 10_000 + "!": "x"}))
    assert err.code == "INVALID_INPUT"
    runner.preflight(flow, {"aaaa": "x"})  # a name the pattern matches is fine
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"properties": {"prompt": {"pattern": r"(a)\1"}}}, "input.properties.prompt.pattern"),
        ({"properties": {"prompt": {"pattern": "(?=a)b"}}}, "input.properties.prompt.pattern"),
        ({"patternProperties": {"(?<!a)b": {}}}, "input.patternProperties.(?<!a)b"),
        ({"items": {"pattern": r"(?!x)"}, "type": "array"}, "input.items.pattern"),
    ],
)
def test_a_pattern_re2_cannot_run_is_an_invalid_flow(
    runner: FlowRunner, schema: dict, field: str
) -> None:
    err = _refused(lambda: runner.preflight({"input": schema, "steps": [_gen(prompt="x")]}, {}))
    assert (err.code, err.field) == ("INVALID_FLOW", field)
    assert "linear-time" in err.message


def test_re2_patterns_keep_json_schema_meaning(runner: FlowRunner) -> None:
    flow = _pattern_flow(r"^\p{L}+ \d+$")  # Unicode classes work (Python's re refused \p)
    runner.preflight(flow, {"text": "héllo 42"})
    assert _refused(lambda: runner.preflight(flow, {"text": "hello"})).field == "input.text"
    runner.preflight(_pattern_flow("circle"), {"text": "a red circle!"})  # search, not match
    lone = _refused(lambda: runner.preflight(_pattern_flow("^a"), {"text": "\ud800"}))
    assert lone.code == "INVALID_INPUT"  # a lone surrogate is text that does not match


# -- 3. preflight: references and sizes ----------------------------------------------------------
def _edit(source: str) -> dict[str, Any]:
    return {
        "id": "edit",
        "type": "ImageToImage",
        "parameters": {"source_image": source, "prompt": "a circle", "negative_prompt": ""},
    }


STRUCTURAL = [
    pytest.param(
        [_gen(prompt="a circle"), _edit("$.results.nope.images[0]")],
        "steps.edit.parameters.source_image",
        "names no step 'nope'",
        id="wired-image-from-no-step",
    ),
    pytest.param(
        [_gen(prompt="$.results.gen.images[0]")],
        "steps.gen.parameters.prompt",
        "own results",
        id="itself",
    ),
    pytest.param(
        [_edit("$.results.gen.images[0]"), _gen(prompt="a circle")],
        "steps.edit.parameters.source_image",
        "runs after this one",
        id="later-step",
    ),
    pytest.param(
        [_gen(prompt="a circle"), _edit("$.results.gen.imagez[0]")],
        "steps.edit.parameters.source_image",
        "no output 'imagez'",
        id="no-such-output",
    ),
    pytest.param(
        [
            _gen(prompt="a circle"),
            {
                "id": "many",
                "type": "ImageGenerator",
                "parameters": {"images": [["@Map($.results.missing.prompts)", {"prompt": "$$"}]]},
            },
        ],
        "steps.many.parameters.images.0.0",
        "names no step 'missing'",
        id="map-over-no-step",
    ),
]


@pytest.mark.parametrize(("steps", "field", "words"), STRUCTURAL)
def test_structural_reference_errors_are_invalid_flows(
    runner: FlowRunner, steps: list, field: str, words: str
) -> None:
    err = _refused(lambda: runner.preflight({"steps": steps}, {}))
    assert (err.code, err.field) == ("INVALID_FLOW", field) and words in err.message
    assert err.details["step"] == field.split(".")[1]
    assert _refused(lambda: runner.check({"steps": steps})).code == "INVALID_FLOW"  # flow check
    assert not runner.host.workspace.exists("runs")


def _map_images(step_id: str = "many") -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "ImageGenerator",
        "parameters": {
            "images": [["@Map($.input.prompts)", {"prompt": "$$", "steps": 2}]],
            "baseModel": "sd",
        },
    }


def _prompts(count: int) -> dict[str, Any]:
    return {"prompts": [f"a red circle number {i}" for i in range(count)]}


def test_a_map_past_the_node_limit_is_the_nodes_error_before_anything_runs(
    runner: FlowRunner,
) -> None:
    flow = {"steps": [_map_images()]}
    start = time.monotonic()
    err = _refused(lambda: runner.preflight(flow, _prompts(20_000)))
    assert time.monotonic() - start < 1
    assert (err.code, err.field) == ("BATCH_SIZE_EXCEEDED", "steps.many.parameters.images")
    assert "20000 requests exceed the limit of 100" in err.message
    assert "100 requests per run" in err.solution  # the node's own solution text
    runner.preflight(flow, _prompts(100))  # the limit itself is fine
    one_more = {"steps": [_map_images()]}
    one_more["steps"][0]["parameters"]["images"].append({"prompt": "and one more"})
    assert _refused(lambda: runner.preflight(one_more, _prompts(100))).code == (
        "BATCH_SIZE_EXCEEDED"
    )


def test_the_run_time_limit_table_matches_the_node() -> None:
    from imagenodes.nodes import image_generator

    assert RUN_TIME_LIST_LIMITS["image_generator", "images"].most == image_generator.MAX_REQUESTS


def test_a_schema_max_items_is_the_nodes_error_with_its_code(runner: FlowRunner) -> None:
    flow = {
        "steps": [
            {
                "id": "blend",
                "type": "ImageGeneration",
                "parameters": {
                    "prompt": "a circle",
                    "image_sources": ["@Map($.input.prompts)", "runs/x/image-0.png"],
                },
            }
        ]
    }
    err = _refused(lambda: runner.preflight(flow, _prompts(9)))
    assert (err.code, err.field) == ("SOURCE_IMAGE_ERROR", "steps.blend.parameters.image_sources")


def _nested(depth: int, ref: str = "$.input.xs") -> Any:
    value: Any = "$$"
    for _ in range(depth):
        value = [f"@Map({ref})", value]
    return value


def test_nested_maps_that_multiply_into_millions_are_counted_not_built(
    runner: FlowRunner,
) -> None:
    xs = {"xs": list(range(100))}
    flow = {"steps": [_gen(prompt=_nested(6))]}  # 10^12 values from a 100-byte step
    assert len(json.dumps(flow)) + len(json.dumps(xs)) < 1024
    start = time.monotonic()
    err = _refused(lambda: runner.preflight(flow, xs))
    assert time.monotonic() - start < 1
    assert (err.code, err.field) == ("INVALID_FLOW", "steps.gen.parameters.prompt")
    assert f"{MAX_STEP_VALUES:,} values" in err.message
    # Inside the node's list too: 100 requests are within its limit, their contents not.
    many = _map_images()
    many["parameters"]["images"][0][1]["negativePrompt"] = _nested(4)
    start = time.monotonic()
    err = _refused(lambda: runner.preflight({"steps": [many]}, {**_prompts(100), **xs}))
    assert time.monotonic() - start < 1
    assert (err.code, err.field) == ("INVALID_FLOW", "steps.many.parameters.images")


def test_a_large_value_copied_by_a_map_counts_its_text(runner: FlowRunner) -> None:
    flow = {"steps": [_gen(prompt=["@Map($.input.xs)", "$.input.big"])]}
    err = _refused(lambda: runner.preflight(flow, {"xs": list(range(100)), "big": "x" * 200_000}))
    assert (err.code, err.field) == ("INVALID_FLOW", "steps.gen.parameters.prompt")
    assert "characters" in err.message


# A node that makes a list, so a later step can map over results (known only at run time).
class NumbersInput(NodeInput):
    count: int = Field(ge=0, le=1000)


class NumbersOutput(NodeOutput):
    numbers: list[int]


class Numbers(Node):
    """Counts: 0 … count-1 (no model, no images)."""

    id = "numbers"
    title = "Numbers (test)"
    description = "A list to map over."
    Input = NumbersInput
    Output = NumbersOutput

    def run(self, inputs: NumbersInput, ctx: Any) -> NumbersOutput:
        return NumbersOutput(numbers=list(range(inputs.count)))


class NumbersPack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(Numbers)


def test_maps_over_results_are_counted_again_before_the_step_is_built(
    runner: FlowRunner,
) -> None:
    flow = {
        "steps": [
            {"id": "count", "type": "Numbers", "parameters": {"count": 100}},
            _gen(prompt=_nested(3, "$.results.count.numbers")),  # 10^6 values at run time
        ]
    }
    runner.preflight(flow, {})  # unknown before the flow runs: nothing certain to refuse
    started: list[str] = []
    start = time.monotonic()
    err = _refused(
        lambda: runner.run(
            flow, {}, on_event=lambda e: started.append(e.node) if e.type == "run.started" else None
        )
    )
    assert time.monotonic() - start < 5
    assert (err.code, err.field) == ("INVALID_FLOW", "steps.gen.parameters.prompt")
    assert started == ["numbers"]  # the second step was refused before it was built


# -- 4. the CLI gets the same refusals ------------------------------------------------------------
@pytest.mark.parametrize(
    ("flow", "inputs", "code"),
    [
        (_with_input({"$ref": "{remote}"}), {"prompt": "x"}, "INVALID_FLOW"),
        (
            _with_input({"properties": {"prompt": {"$ref": "file:///etc/passwd"}}}),
            {},
            "INVALID_FLOW",
        ),
        (_pattern_flow(r"(a)\1"), {"text": "x"}, "INVALID_FLOW"),
        ({"steps": [_gen(prompt="$.results.gen.images[0]")]}, {}, "INVALID_FLOW"),
        ({"steps": [_map_images()]}, _prompts(20_000), "BATCH_SIZE_EXCEEDED"),
        ({"steps": [_gen(prompt=_nested(5))]}, {"xs": list(range(100))}, "INVALID_FLOW"),
    ],
    ids=["remote-ref", "file-ref", "backreference", "self-reference", "20000-prompts", "nested"],
)
def test_imagenodes_flow_run_refuses_the_same(
    tmp_path: Path, listener: Listener, capsys: pytest.CaptureFixture[str], flow, inputs, code
) -> None:
    text = json.dumps(flow).replace("{remote}", f"{listener.url}/s.json")
    path = tmp_path / "flow.json"
    path.write_text(text)
    argv = ["--workspace", str(tmp_path / "ws"), "flow", "run", str(path)]
    start = time.monotonic()
    exit_code = cli_main([*argv, "--input", json.dumps(inputs), "-q"], out=io.StringIO())
    assert time.monotonic() - start < 5
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert (exit_code, error["code"]) == (2, code), error
    assert listener.requests == []
    assert not (tmp_path / "ws" / "runs").exists()


# -- the same against a real server --------------------------------------------------------------
def _post(served: Served, flow: dict[str, Any], inputs: dict[str, Any]) -> Any:
    with served.client() as c:
        c.post("/v1/queue/pause")  # a flow that is accepted is queued, never generated
        before = c.get("/v1/jobs").json()["jobs"]
        start = time.monotonic()
        r = c.post("/v1/flows/run", json={"flow": flow, "inputs": inputs})
        elapsed = time.monotonic() - start
        after = c.get("/v1/jobs").json()["jobs"]
    return r, elapsed, len(after) - len(before)


@pytest.mark.slow
def test_server_refuses_remote_and_file_refs_without_fetching(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
    listener: Listener,
) -> None:
    served = serve()
    for schema, field in [
        ({"$ref": f"{listener.url}/s.json"}, "flow.input.$ref"),
        (
            {"properties": {"prompt": {"$ref": f"{listener.url}/p.json"}}},
            "flow.input.properties.prompt.$ref",
        ),
        (
            {"properties": {"prompt": {"$ref": "file:///etc/passwd"}}},
            "flow.input.properties.prompt.$ref",
        ),
    ]:
        r, _, queued = _post(served, _with_input(schema), {"prompt": "a red circle"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("INVALID_FLOW", field)
        assert queued == 0
    assert listener.requests == []


@pytest.mark.slow
def test_server_runs_patterns_in_linear_time(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
) -> None:
    served = serve()
    r, elapsed, queued = _post(served, _pattern_flow(), {"text": "a" * 10_000 + "!"})
    assert (r.status_code, r.json()["error"]["code"], queued) == (422, "INVALID_INPUT", 0)
    assert r.json()["error"]["field"] == "input.text" and elapsed < 1
    r, elapsed, queued = _post(served, _pattern_flow(), {"text": "a" * 10_000})
    assert (r.status_code, queued) == (202, 1) and elapsed < 1, r.text
    r, _, queued = _post(served, _pattern_flow(r"(a)\1"), {"text": "aa"})
    assert r.status_code == 422 and queued == 0
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (
        "INVALID_FLOW",
        "flow.input.properties.text.pattern",
    )


@pytest.mark.slow
@pytest.mark.parametrize(("steps", "field", "words"), STRUCTURAL)
def test_server_refuses_structural_errors_before_queuing(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
    steps: list,
    field: str,
    words: str,
) -> None:
    r, _, queued = _post(serve(), {"steps": steps}, {})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("INVALID_FLOW", field) and words in error["message"]
    assert queued == 0


@pytest.mark.slow
def test_server_refuses_oversized_maps_before_queuing_in_well_under_a_second(
    serve: Callable[..., Served],  # noqa: F811  (the fixture imported above)
) -> None:
    served = serve()
    r, elapsed, queued = _post(served, {"steps": [_map_images()]}, _prompts(20_000))
    assert r.status_code == 422 and queued == 0 and elapsed < 1, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (
        "BATCH_SIZE_EXCEEDED",
        "steps.many.parameters.images",
    )
    flow = {"steps": [_gen(prompt=_nested(6))]}
    r, elapsed, queued = _post(served, flow, {"xs": list(range(100))})
    assert r.status_code == 422 and queued == 0 and elapsed < 1, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == ("INVALID_FLOW", "steps.gen.parameters.prompt")
    r, _, queued = _post(served, {"steps": [_map_images()]}, _prompts(100))
    assert (r.status_code, queued) == (202, 1), r.text
