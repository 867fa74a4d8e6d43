"""Request bodies validated once, at the edge: the per-node job union, its coded errors
and OpenAPI document, and the flow document model.

The service's app is not used here (other modules test it end to end): each test
builds a small FastAPI app the way ``create_app`` does — routes defined inside a
function, ``from __future__ import annotations`` on, the union attached with
``body_type`` — and serves it with uvicorn on 127.0.0.1, so what is tested is real
HTTP parsing, FastAPI's body validation and the exception handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field, model_validator

from imagenodes import Host, ImageNodesError, Node, NodeInput, NodeOutput, Prompt, hookimpl
from imagenodes.flows import FlowDocument, FlowRunner, parse_document
from imagenodes.flows import runner as flow_runner
from imagenodes.sdk import MAX_TEXT_CHARS
from imagenodes.server.requests import (
    JOB_REQUEST_SCHEMA,
    FlowRequest,
    NodeJob,
    body_kind_for,
    body_type,
    build_job_request,
    coded_request_error,
    job_models,
    openapi_patch,
)
from tests.helpers import start_in_thread

GOOD = {"prompt": "a red circle on a blue background", "negative_prompt": ""}

#: How often EchoInput's model validator ran (the "validated once" evidence).
VALIDATIONS: list[dict[str, Any]] = []


class EchoInput(NodeInput):
    prompt: Prompt
    note: str = ""
    seed: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _counted(self) -> EchoInput:
        VALIDATIONS.append(self.model_dump())
        return self


class EchoOutput(NodeOutput):
    text: str
    seed: int | None = None


class Echo(Node[EchoInput, EchoOutput]):
    """A node that generates nothing (no torch): it returns its prompt."""

    id = "echo_text"
    title = "Echo (test)"
    description = "Returns its prompt; counts its input validations."
    field_codes: ClassVar[dict[str, str]] = {"prompt": "EMPTY_PROMPT"}

    def run(self, inputs: EchoInput, ctx: Any) -> EchoOutput:
        return EchoOutput(text=f"{inputs.prompt}{inputs.note}", seed=inputs.seed)


class EchoPack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(Echo)


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host]) -> Host:
    return make_host(plugins=[EchoPack()])


# -- an app built as create_app builds its routes -------------------------------------------
def make_app(host: Host) -> FastAPI:
    app = FastAPI(title="requests-test", version="0")
    job_body = build_job_request(host)  # a type built at run time, per host

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = coded_request_error(exc, body_kind_for(request.url.path), host)
        return JSONResponse({"error": error.to_dict()}, status_code=_status(error))

    @app.exception_handler(ImageNodesError)
    async def coded_error(request: Request, exc: ImageNodesError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=_status(exc))

    @app.post("/v1/jobs", status_code=202)
    @body_type(job_body)
    async def post_job(request_: NodeJob) -> dict[str, Any]:
        # What the service does with the model: no second validation (Host.validate
        # returns an Input instance as it is) and the bodies to hash and to store.
        assert host.validate(request_.node, request_.inputs) is request_.inputs
        return {
            "model": type(request_).__name__,
            "inputs_type": type(request_.inputs).__name__,
            "client_body": request_.client_body(),
            "job_body": request_.job_body(),
        }

    @app.put("/v1/jobs/{job_id}", status_code=202)
    @body_type(job_body)
    async def put_job(job_id: str, request_: NodeJob) -> dict[str, Any]:
        return {"id": job_id, "client_body": request_.client_body()}

    @app.post("/v1/flows/run", status_code=202)
    async def post_flow(request_: FlowRequest) -> dict[str, Any]:
        assert isinstance(request_.flow, FlowDocument)
        FlowRunner(host).preflight(request_.flow, request_.inputs)
        return request_.job_body()

    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_patch(plain_openapi(), host)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _status(error: ImageNodesError) -> int:
    return {"UNKNOWN_NODE": 404, "CONNECTION_ERROR": 400}.get(error.code, 422)


@pytest.fixture(scope="module")
def client(host: Host) -> Iterator[httpx.Client]:
    """The test app on uvicorn (port 0, 127.0.0.1) in a thread."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(make_app(host), host="127.0.0.1", port=0, log_level="warning")
    )
    port, thread = start_in_thread(server)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        yield c
    server.should_exit = True
    thread.join(30)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert "error" in response.json(), response.text
    return dict(response.json()["error"])


# -- coded errors ------------------------------------------------------------------------------
def test_bad_steps_is_the_library_error_with_the_field_as_it_sits_in_the_body(
    client: httpx.Client, host: Host
) -> None:
    inputs = {**GOOD, "steps": 51}
    r = client.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": inputs})
    assert r.status_code == 422
    error = error_of(r)
    with pytest.raises(ImageNodesError) as direct:
        host.validate("generate_image_v2", inputs)
    # Exactly Host.validate's error (code, message with the range, solution) …
    assert error["code"] == direct.value.code == "INVALID_STEPS"
    assert error["message"] == direct.value.message == "steps must be integer > 0 and ≤ 50 (got 51)"
    assert error["solution"] == direct.value.solution
    # … naming the field where it is in the request.
    assert (direct.value.field, error["field"]) == ("steps", "inputs.steps")


def test_node_solution_texts_apply(client: httpx.Client) -> None:
    """image_to_image words INVALID_STEPS its own way (docs/errors.md)."""
    inputs = {**GOOD, "source_image": "uploads/x.png", "steps": 80}
    error = error_of(client.post("/v1/jobs", json={"node": "image_to_image", "inputs": inputs}))
    assert (error["code"], error["field"]) == ("INVALID_STEPS", "inputs.steps")
    assert error["solution"] == "Set steps between 1 and 50 (20-30 is typically sufficient)"


@pytest.mark.parametrize(
    "inputs", [{"negative_prompt": ""}, {**GOOD, "prompt": "   "}, {**GOOD, "prompt": None}]
)
def test_a_missing_or_blank_prompt_is_empty_prompt(client: httpx.Client, inputs: dict) -> None:
    r = client.post("/v1/jobs", json={"node": "generate_image_v2", "inputs": inputs})
    assert r.status_code == 422
    assert (error_of(r)["code"], error_of(r)["field"]) == ("EMPTY_PROMPT", "inputs.prompt")


def test_absent_inputs_are_validated_as_an_empty_object(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", json={"node": "generate_image_v2"})
    assert (error_of(r)["code"], error_of(r)["field"]) == ("EMPTY_PROMPT", "inputs.prompt")
    ok = client.post("/v1/jobs", json={"node": "check_engine_status"})  # nothing required
    assert ok.status_code == 202 and ok.json()["job_body"]["inputs"] == {}


@pytest.mark.parametrize("node", ["no_such_node", "x" * 5000, 7])
def test_an_unknown_node_is_unknown_node_404(client: httpx.Client, node: Any) -> None:
    r = client.post("/v1/jobs", json={"node": node, "inputs": {}})
    assert r.status_code == 404
    error = error_of(r)
    assert (error["code"], error["field"]) == ("UNKNOWN_NODE", "node")
    assert "generate_image_v2" in error["message"] and len(error["message"]) < 1000


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"inputs": GOOD}, "node", "missing required field 'node'"),
        ({"node": "generate_image_v2", "inputs": GOOD, "extra": 1}, "extra", "unknown field"),
        # The envelope's error comes first, as when the service checked it before the inputs.
        ({"node": "generate_image_v2", "extra": 1}, "extra", "allowed fields: node, inputs"),
        (
            {"node": "generate_image_v2", "inputs": GOOD, "webhook_events": ["job.nope"]},
            "webhook_events",
            "job.completed",
        ),
        ({"node": "generate_image_v2", "inputs": GOOD, "webhook": "h" * 3000}, "webhook", "2048"),
        ({"node": "generate_image_v2", "inputs": [1]}, "inputs", "must be a JSON object"),
        ({"node": "generate_image_v2", "inputs": {**GOOD, "nope": 1}}, "inputs.nope", "unknown"),
    ],
)
def test_bad_envelope_fields_are_invalid_input_naming_them(
    client: httpx.Client, body: dict, field: str, words: str
) -> None:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422
    error = error_of(r)
    assert (error["code"], error["field"]) == ("INVALID_INPUT", field)
    assert words in error["message"]


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"{nope", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "JSON body")],
)
def test_bodies_that_are_not_objects(client: httpx.Client, content: bytes, words: str) -> None:
    r = client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422
    error = error_of(r)
    assert error["code"] == "INVALID_INPUT" and words in error["message"]


def test_what_host_validate_adds_to_pydantic_happens_in_the_same_pass(
    client: httpx.Client,
) -> None:
    # check_text: a lone surrogate (valid JSON, invalid Unicode).
    body = b'{"node": "echo_text", "inputs": {"prompt": "a \\ud800 b"}}'
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert (error_of(r)["code"], error_of(r)["field"]) == ("INVALID_INPUT", "inputs.prompt")
    assert "Unicode" in error_of(r)["message"]
    # check_lengths: any string input past the cap, a pack's free text too.
    long = {"prompt": "a cat", "note": "n" * (MAX_TEXT_CHARS + 1)}
    error = error_of(client.post("/v1/jobs", json={"node": "echo_text", "inputs": long}))
    assert (error["code"], error["field"]) == ("INVALID_INPUT", "inputs.note")
    assert f"at most {MAX_TEXT_CHARS} characters" in error["message"]


def test_run_time_choices_are_enforced(client: httpx.Client, host: Host) -> None:
    allowed = host.catalog_entry("image_generation")["input_schema"]["properties"]["model"]["enum"]
    bad = {"prompt": "a cat", "model": "no-such-family"}
    error = error_of(client.post("/v1/jobs", json={"node": "image_generation", "inputs": bad}))
    assert (error["code"], error["field"]) == ("INVALID_INPUT", "inputs.model")
    assert f"one of: {', '.join(allowed)}" in error["message"]
    good = {"prompt": "a cat", "model": allowed[-1], "seed": 3}
    r = client.post("/v1/jobs", json={"node": "image_generation", "inputs": good})
    assert r.status_code == 202 and r.json()["job_body"]["inputs"]["model"] == allowed[-1]


def test_non_body_parameters_are_named_by_their_name(host: Host) -> None:
    """Query/path errors keep a coded shape too (no node table involved)."""
    exc = RequestValidationError(
        [{"type": "int_parsing", "loc": ("query", "limit"), "msg": "bad", "input": "x"}]
    )
    error = coded_request_error(exc, None, host)
    assert (error.code, error.field) == ("INVALID_INPUT", "limit")


# -- one validation, seeds drawn in it ---------------------------------------------------------
def test_a_request_is_validated_once_and_unseeded_requests_get_seeds(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_second_validation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Input model was validated again")

    VALIDATIONS.clear()
    r = client.post("/v1/jobs", json={"node": "echo_text", "inputs": {"prompt": "a cat"}})
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["model"] == "EchoTextJob" and out["inputs_type"] == "EchoInput"
    # One run of the node's validator for parsing, seeding and the host's checks (the
    # route's Host.validate(model) returned the instance without validating again).
    assert len(VALIDATIONS) == 1
    seed = out["job_body"]["inputs"]["seed"]
    assert isinstance(seed, int) and VALIDATIONS[0]["seed"] == seed  # the model holds it too
    assert out["client_body"] == {"node": "echo_text", "inputs": {"prompt": "a cat"}}
    # A seeded request keeps its seed.
    r = client.post("/v1/jobs", json={"node": "echo_text", "inputs": {"prompt": "a", "seed": 9}})
    assert r.json()["job_body"]["inputs"]["seed"] == 9


def test_each_image_request_of_image_generator_gets_its_seed(client: httpx.Client) -> None:
    inputs = {"images": [{"prompt": "a cat"}, {"prompt": "a dog", "seed": 4}]}
    r = client.post("/v1/jobs", json={"node": "image_generator", "inputs": inputs})
    assert r.status_code == 202, r.text
    images = r.json()["job_body"]["inputs"]["images"]
    assert isinstance(images[0]["seed"], int) and images[1]["seed"] == 4
    assert r.json()["client_body"]["inputs"] == inputs


def test_the_same_unseeded_body_is_the_same_client_body(client: httpx.Client) -> None:
    """PUT compares the client's body: drawn seeds must not make it a different one."""
    body = {"node": "echo_text", "inputs": {"prompt": "a cat"}, "webhook": None}
    first = client.put("/v1/jobs/a", json=body).json()["client_body"]
    again = client.put("/v1/jobs/a", json=body).json()["client_body"]
    assert first == again == {"node": "echo_text", "inputs": {"prompt": "a cat"}}


# -- the OpenAPI document ----------------------------------------------------------------------
def test_the_openapi_union_has_one_variant_per_node(client: httpx.Client, host: Host) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    union = schemas[JOB_REQUEST_SCHEMA]
    mapping = union["discriminator"]["mapping"]
    assert union["discriminator"]["propertyName"] == "node"
    assert set(mapping) == set(host.nodes)
    assert sorted(v["$ref"] for v in union["oneOf"]) == sorted(mapping.values())
    for path, method in (("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "put")):
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{JOB_REQUEST_SCHEMA}"}
    models = job_models(host)
    for node_id, ref in mapping.items():
        variant = schemas[ref.rsplit("/", 1)[1]]
        assert variant["properties"]["node"]["const"] == node_id
        assert variant["additionalProperties"] is False
        inputs = schemas[variant["properties"]["inputs"]["$ref"].rsplit("/", 1)[1]]
        cls = host.node(node_id)
        assert inputs["title"] == cls.Input.model_json_schema()["title"]
        assert set(inputs["properties"]) == set(cls.Input.model_fields)
        assert models[node_id].node_class is cls
    steps = schemas["GenerateImageV2NodeInput"]["properties"]["steps"]
    assert (steps["exclusiveMinimum"], steps["maximum"]) == (0, 50)
    # The run-time choices pydantic cannot know, as the catalog publishes them.
    published = host.catalog_entry("image_generation")["input_schema"]["properties"]["model"]
    assert schemas["ImageGenerationInput"]["properties"]["model"]["enum"] == published["enum"]
    assert doc["paths"]["/v1/flows/run"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/FlowRequest"}
    assert "FlowDocument" in schemas and "FlowStep" in schemas


def test_the_union_is_an_ordinary_pydantic_type(host: Host) -> None:
    from pydantic import TypeAdapter, ValidationError

    adapter: TypeAdapter[NodeJob] = TypeAdapter(build_job_request(host))
    job = adapter.validate_python({"node": "echo_text", "inputs": {"prompt": "a cat"}})
    assert isinstance(job, NodeJob) and isinstance(job.inputs, Echo.Input)
    assert adapter.validate_python(job) is job  # a model instance is not validated again
    with pytest.raises(ValidationError):
        adapter.validate_python({"node": "echo_text", "inputs": {"prompt": " "}})
    # A Python caller's Input instance is taken as it is, and stored as its fields.
    given = Echo.Input(prompt="a dog", seed=5)
    built = adapter.validate_python({"node": "echo_text", "inputs": given})
    assert built.inputs is given
    assert built.job_body() == {"node": "echo_text", "inputs": {"prompt": "a dog", "seed": 5}}


def test_a_body_default_on_a_union_route_is_refused_when_the_route_is_made(host: Host) -> None:
    """FastAPI keeps only the bare union of a parameter whose default is ``Body(...)``
    (every node's model would be tried in turn): the built type makes that an error."""
    from fastapi import Body

    app = FastAPI()
    body_default = Body(...)  # as a route module would hold it
    with pytest.raises(AssertionError, match="Annotated"):

        @app.post("/x")
        @body_type(build_job_request(host))
        async def x(request_: Any = body_default) -> None:
            return None


# -- flows -------------------------------------------------------------------------------------
def seed_003_flow() -> dict[str, Any]:
    """The example flow of seed 003, as written there."""
    return {
        "title": "Let's generate images!",
        "description": "Generate images",
        "input": {
            "type": "object",
            "required": ["promptType"],
            "properties": {
                "promptType": {
                    "type": "string",
                    "title": "What kind of prompts",
                    "maxLength": 1000,
                    "minLength": 4,
                    "description": "Describe what kinds of prompts you want to generate.",
                    "placeholder": "Cyberpunk world",
                }
            },
        },
        "ui": {"results": {"widgets": [{"type": "Images", "sources": ["dynamicImageGenerator"]}]}},
        "steps": [
            {
                "id": "promptsGenerator",
                "type": "ObjectGenerator",
                "parameters": {
                    "count": 40,
                    "input": "$.input.promptType",
                    "description": "You are going to be given a prompt type as input. …",
                    "schema": {
                        "type": "object",
                        "properties": {"prompts": {"type": "array", "items": {"type": "string"}}},
                    },
                },
            },
            {
                "id": "dynamicImageGenerator",
                "type": "ImageGenerator",
                "parameters": {
                    "images": [
                        [
                            "@Map($.results.promptsGenerator.prompts)",
                            {"steps": 30, "prompt": "$$", "negativePrompt": "ugly, blurry"},
                        ]
                    ],
                    "baseModel": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                },
            },
        ],
    }


def test_the_seed_flow_parses_into_a_document_and_dumps_back_unchanged() -> None:
    data = seed_003_flow()
    document = parse_document(data)
    assert document.title == "Let's generate images!"
    assert [(s.id, s.type) for s in document.steps] == [
        ("promptsGenerator", "ObjectGenerator"),
        ("dynamicImageGenerator", "ImageGenerator"),
    ]
    assert document.input is not None and document.input["required"] == ["promptType"]
    assert document.steps[1].parameters["baseModel"].startswith("stable-diffusion")
    # What a job stores: the document as written (nothing added, nothing lost).
    assert document.model_dump(mode="json", exclude_unset=True) == data
    extra = parse_document({**data, "layout": {"x": 1}, "steps": [{**data["steps"][0], "pos": 2}]})
    assert extra.model_dump(exclude_unset=True)["layout"] == {"x": 1}
    assert extra.model_dump(exclude_unset=True)["steps"][0]["pos"] == 2


@pytest.mark.parametrize(
    ("flow", "field", "words"),
    [
        ({}, "steps", "missing required field"),
        ({"steps": []}, "steps", "at least 1"),
        ({"steps": [{"type": "EchoText"}]}, "steps.0.id", "missing required field"),
        ({"steps": [{"id": "", "type": "EchoText"}]}, "steps.0.id", "at least 1 characters"),
        ({"steps": [{"id": "a"}]}, "steps.0.type", "missing required field"),
        ({"steps": ["a"]}, "steps.0", "must be object"),
        ({"steps": [{"id": "a", "type": "EchoText", "parameters": []}]}, "steps.0.parameters", ""),
        (
            {
                "steps": [
                    {"id": "a", "type": "EchoText"},
                    {"id": "b", "type": "EchoText"},
                    {"id": "a", "type": "EchoText"},
                ]
            },
            "steps.2.id",
            "used twice",
        ),
        ({"input": {"type": 5}, "steps": [{"id": "a", "type": "X"}]}, "input", "JSON Schema"),
        ({"title": ["t"], "steps": [{"id": "a", "type": "X"}]}, "title", ""),
    ],
)
def test_a_bad_document_is_a_coded_error_naming_the_path(
    client: httpx.Client, flow: dict, field: str, words: str
) -> None:
    with pytest.raises(ImageNodesError) as info:
        parse_document(flow)
    assert (info.value.code, info.value.field) == ("INVALID_INPUT", field)
    assert words in info.value.message
    # The same problem in an HTTP body is named where it sits there.
    r = client.post("/v1/flows/run", json={"flow": flow, "inputs": {}})
    assert r.status_code == 422
    error = error_of(r)
    assert (error["code"], error["field"]) == ("INVALID_INPUT", f"flow.{field}")
    assert error["message"] == info.value.message


def test_flow_route_envelope_errors_and_a_good_flow(client: httpx.Client) -> None:
    flow = {"steps": [{"id": "a", "type": "EchoText", "parameters": {"prompt": "$.input.p"}}]}
    error = error_of(client.post("/v1/flows/run", json={"flow": flow, "nope": 1}))
    assert (error["code"], error["field"]) == ("INVALID_INPUT", "nope")
    error = error_of(client.post("/v1/flows/run", json={"inputs": {}}))
    assert (error["code"], error["field"]) == ("INVALID_INPUT", "flow")
    r = client.post("/v1/flows/run", json={"flow": flow, "inputs": {"p": "a cat"}})
    assert r.status_code == 202, r.text
    assert r.json() == {"flow": flow, "inputs": {"p": "a cat"}}  # stored as sent
    # The preflight runs on the parsed document: a step type no node answers to.
    bad = {"steps": [{"id": "a", "type": "Nope"}]}
    error = error_of(client.post("/v1/flows/run", json={"flow": bad}))
    assert (error["code"], error["field"]) == ("UNKNOWN_NODE", "steps.a.type")


def test_the_runner_parses_a_mapping_once_and_a_document_not_at_all(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    real = flow_runner.parse_document

    def counted(data: Any) -> FlowDocument:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(flow_runner, "parse_document", counted)
    flow = {
        "title": "echo",
        "input": {"type": "object", "properties": {"p": {"type": "string", "default": "a"}}},
        "ui": {"results": {"widgets": [{"type": "Images", "sources": ["one"]}]}},
        "steps": [
            {"id": "one", "type": "EchoText", "parameters": {"prompt": "$.input.p", "seed": 1}},
            {"id": "two", "type": "echo-text", "parameters": {"prompt": "$.results.one.text"}},
        ],
    }
    result = FlowRunner(host).run(flow, {"p": "a cat"})
    assert len(calls) == 1
    assert result.title == "echo" and result.results["two"]["text"] == "a cat"
    assert result.widgets == [{"type": "Images", "sources": ["one"], "images": []}]

    calls.clear()
    document = FlowDocument.model_validate(flow)
    runner = FlowRunner(host)
    runner.preflight(document, {"p": "a cat"})
    assert runner.check(document)[1]["node"] == "echo_text"
    assert FlowRunner(host).run(document, {}).results["one"]["text"] == "a"  # the default
    assert calls == []  # a parsed document is never parsed again


def test_a_stored_flow_job_body_round_trips(host: Host) -> None:
    """The route's model is dumped once into the job; the worker parses it once."""
    body = {"flow": seed_003_flow(), "inputs": {"promptType": "Cyberpunk world"}}
    request = FlowRequest.model_validate(body)
    stored = json.loads(json.dumps(request.job_body()))
    assert stored == body
    assert parse_document(stored["flow"]) == request.flow
