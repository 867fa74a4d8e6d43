"""Flows: the seed-003 flow shape over registered nodes, references and @Map."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from imagenodes import Cancelled, Host, ImageNodesError, Node, NodeInput, NodeOutput, hookimpl
from imagenodes.cli import main as cli_main
from imagenodes.flows import FlowRunner, camel_to_snake, load_flow
from imagenodes.registry.context import CancelToken
from imagenodes.workspace import read_imagenodes_metadata


class ObjectGeneratorInput(NodeInput):
    count: int = Field(ge=1, le=50)
    input: str
    description: str = ""
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ObjectGeneratorOutput(NodeOutput):
    prompts: list[str]


class PromptList(Node):
    """Stands in for the seed's LLM ObjectGenerator: ``count`` prompts from the input."""

    id = "object_generator"
    title = "Prompt list (test)"
    description = "Deterministic prompts for flow tests."
    Input = ObjectGeneratorInput
    Output = ObjectGeneratorOutput

    def run(self, inputs: ObjectGeneratorInput, ctx: Any) -> ObjectGeneratorOutput:
        shapes = ["circle", "square", "triangle", "star"]
        return ObjectGeneratorOutput(
            prompts=[f"{inputs.input}, a {shapes[i % 4]} number {i}" for i in range(inputs.count)]
        )


class PromptPack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(PromptList)


def seed_flow(model: str, count: int = 3) -> dict[str, Any]:
    """The seed's example flow; only count (40 → 3), the model (hub id → the tiny model)
    and size/steps (for a 2-core CI) differ.  The ObjectGenerator step is kept as is:
    a registered test node answers to that type."""
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
                    "count": count,
                    "input": "$.input.promptType",
                    "description": "You are going to be given a prompt type as input. ...",
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
                            {
                                "steps": 2,
                                "prompt": "$$",
                                "negativePrompt": "ugly, blurry",
                                "width": 64,
                                "height": 64,
                            },
                        ]
                    ],
                    "baseModel": model,
                },
            },
        ],
    }


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host], tiny_sd: Path) -> Host:
    # The flow's baseModel is a caller's value: it names a folder under models_dir.
    return make_host(
        tiny_sd,
        tiny_profile=True,
        plugins=[PromptPack()],
        connections={"default": {"models_dir": str(tiny_sd.parent)}},
    )


def test_seed_flow_makes_one_image_per_mapped_prompt(host: Host, tiny_sd: Path) -> None:
    result = FlowRunner(host).run(seed_flow(tiny_sd.name), {"promptType": "Cyberpunk world"})
    prompts = result.results["promptsGenerator"]["prompts"]
    generated = result.results["dynamicImageGenerator"]
    assert len(prompts) == 3 and len(generated["images"]) == 3
    assert [r["prompt"] for r in generated["requests"]] == prompts
    for ref in generated["images"]:
        meta = read_imagenodes_metadata(host.workspace.read_bytes(ref))
        assert meta["negative_prompt"] == "ugly, blurry" and meta["steps"] == 2
    assert [s.node for s in result.steps] == ["object_generator", "image_generator"]
    assert result.pipeline_calls == generated["pipelineCalls"] == 1  # one group, one call
    assert result.widgets[0]["images"] == generated["images"]


def test_flow_input_is_validated_against_its_schema(host: Host, tiny_sd: Path) -> None:
    for bad in ({}, {"promptType": "abc"}):
        with pytest.raises(ImageNodesError) as info:
            FlowRunner(host).run(seed_flow(tiny_sd.name), bad)
        assert info.value.code == "INVALID_INPUT" and info.value.field.startswith("input")


def test_step_errors_keep_their_code_and_name_the_step(host: Host, tiny_sd: Path) -> None:
    flow = seed_flow(tiny_sd.name)
    flow["steps"][1]["parameters"]["images"][0][1]["width"] = 100
    with pytest.raises(ImageNodesError) as info:
        FlowRunner(host).run(flow, {"promptType": "Cyberpunk world"})
    err = info.value
    assert err.code == "INVALID_DIMENSIONS"
    assert err.field == "steps.dynamicImageGenerator.parameters.images.0.width"
    assert err.details["step"] == "dynamicImageGenerator" and "dynamicImageGenerator" in err.message


def test_a_cancelled_flow_raises_cancelled_naming_the_step(host: Host, tiny_sd: Path) -> None:
    """A step's error keeps its class: the service tells a cancelled flow job from a
    failed one (and requeues it at shutdown) by ``Cancelled``, not by the code alone."""
    token = CancelToken()
    token.cancel("stop")
    with pytest.raises(Cancelled) as info:
        FlowRunner(host).run(
            seed_flow(tiny_sd.name), {"promptType": "Cyberpunk world"}, token=token
        )
    assert info.value.code == "CANCELLED" and info.value.details["step"]


# -- resolution (no generation) --------------------------------------------------------
@pytest.fixture
def runner(make_host: Callable[..., Host]) -> FlowRunner:
    return FlowRunner(make_host(plugins=[PromptPack()]))


SCOPE = {
    "input": {"name": "cats", "list": [{"p": "a"}, {"p": "b"}], "n": 2},
    "results": {"s1": {"prompts": ["x", "y"], "nested": {"deep": [10, 20, 30]}}},
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$.input.name", "cats"),
        ("$.input.n", 2),
        ("$.results.s1.nested.deep[1]", 20),
        ("$.results.s1.nested.deep.2", 30),
        ("$.input", SCOPE["input"]),
        ("costs $5 and $.input.name", "costs $5 and $.input.name"),  # not a whole reference
        ("$$ is literal text here? no", "$$ is literal text here? no"),
        (["@Map($.results.s1.prompts)", {"prompt": "$$"}], [{"prompt": "x"}, {"prompt": "y"}]),
        (
            [["@Map($.input.list)", {"prompt": "$$.p", "n": "$.input.n"}], {"prompt": "fixed"}],
            [{"prompt": "a", "n": 2}, {"prompt": "b", "n": 2}, {"prompt": "fixed"}],
        ),
        ({"images": [["@Map($.results.s1.prompts)", "$$"]]}, {"images": ["x", "y"]}),
        (
            ["@Map($.input.list)", ["@Map($.results.s1.prompts)", {"outer": "$.input.name"}]],
            [[{"outer": "cats"}] * 2] * 2,
        ),
    ],
)
def test_references_and_map(runner: FlowRunner, value: Any, expected: Any) -> None:
    assert runner.substitute(value, SCOPE, "p") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("$.results.s2.prompts", "keys there: s1"),
        ("$.results.s1.nested.deep[7]", "a list of 3 items"),
        ("$.input.name.first", "a str"),
        ("$$", "only meaningful inside a @Map"),
        (["@Map($.input.name)", {"p": "$$"}], "@Map needs a list"),
        (["@Map(prompts)", {"p": "$$"}], "needs a reference"),
    ],
)
def test_reference_errors_name_what_exists(runner: FlowRunner, value: Any, message: str) -> None:
    with pytest.raises(ImageNodesError) as info:
        runner.substitute(value, SCOPE, "steps.gen.parameters.images")
    assert info.value.code == "INVALID_INPUT" and message in info.value.message
    assert info.value.field == "steps.gen.parameters.images"


def test_step_types_map_to_node_ids(runner: FlowRunner) -> None:
    assert camel_to_snake("ImageGenerator") == "image_generator"
    assert runner.node_for("ImageGenerator") == "image_generator"
    assert runner.node_for("generate-image") == "generate_image"
    assert runner.node_for("image_generator") == "image_generator"
    assert runner.node_for("ObjectGenerator") == "object_generator"
    with pytest.raises(ImageNodesError) as info:
        runner.node_for("ModelGenerator", where="steps.train.type")
    assert info.value.code == "UNKNOWN_NODE" and info.value.field == "steps.train.type"


@pytest.mark.parametrize(
    ("flow", "field"),
    [
        ({"steps": []}, "steps"),
        (
            {"steps": [{"id": "a", "type": "ImageGenerator"}, {"id": "a", "type": "X"}]},
            "steps.1.id",
        ),
        ({"steps": [{"type": "ImageGenerator"}]}, "steps.0.id"),
        ({"steps": [{"id": "a", "type": "Nope"}]}, "steps.a.type"),
        (
            {"steps": [{"id": "a", "type": "ImageGenerator", "parameters": []}]},
            "steps.0.parameters",
        ),
    ],
)
def test_malformed_flows_are_refused_before_running(runner: FlowRunner, flow, field) -> None:
    with pytest.raises(ImageNodesError) as info:
        runner.run(flow, {})
    assert info.value.field == field


def _two_step(steps: int) -> dict[str, Any]:
    return {
        "input": {"type": "object", "properties": {"p": {"type": "string"}}},
        "steps": [
            {
                "id": "gen",
                "type": "GenerateImageV2",
                "parameters": {"prompt": "$.input.p", "negative_prompt": "", "steps": 2},
            },
            {
                "id": "edit",
                "type": "image-to-image",
                "parameters": {
                    "source_image": "$.results.gen.images[0]",  # a wire
                    "prompt": "$.input.p",
                    "negative_prompt": "",
                    "steps": steps,
                },
            },
        ],
    }


def test_preflight_checks_a_wired_step_before_anything_runs(runner: FlowRunner) -> None:
    runner.preflight(_two_step(20), {"p": "a red circle"})  # valid: nothing raised
    with pytest.raises(ImageNodesError) as info:
        runner.preflight(_two_step(80), {"p": "a red circle"})
    assert info.value.code == "INVALID_STEPS"
    assert info.value.field == "steps.edit.parameters.steps"
    assert info.value.details["step"] == "edit"
    with pytest.raises(ImageNodesError) as info:  # the flow input is checked too
        runner.preflight(_two_step(20), {"p": 5})
    assert info.value.field.startswith("input")


def test_a_flow_with_a_bad_wired_step_runs_nothing(runner: FlowRunner) -> None:
    """``run`` preflights too: the first step does not generate (no torch, no run folder)
    when the second would be refused."""
    with pytest.raises(ImageNodesError) as info:
        runner.run(_two_step(80), {"p": "a red circle"})
    assert info.value.field == "steps.edit.parameters.steps"
    assert not runner.host.workspace.exists("runs")


def test_preflight_leaves_steps_built_from_results_to_run_time(runner: FlowRunner) -> None:
    flow = {
        "steps": [
            {"id": "s1", "type": "ObjectGenerator", "parameters": {"count": 2, "input": "x"}},
            {
                "id": "s2",
                "type": "ImageGenerator",
                # A result inside a value: unknown until s1 ran, so not checked now —
                # although its width (100) would be refused at run time.
                "parameters": {
                    "images": [["@Map($.results.s1.prompts)", {"prompt": "$$", "width": 100}]]
                },
            },
        ]
    }
    runner.preflight(flow, {})


def test_later_steps_only_see_earlier_results(runner: FlowRunner) -> None:
    flow = {
        "steps": [
            {
                "id": "first",
                "type": "ObjectGenerator",
                "parameters": {"count": 1, "input": "$.results.second.prompts"},
            },
            {"id": "second", "type": "ObjectGenerator", "parameters": {"count": 1, "input": "x"}},
        ]
    }
    with pytest.raises(ImageNodesError) as info:
        runner.run(flow, {})
    assert info.value.field == "steps.first.parameters.input"


# -- CLI -------------------------------------------------------------------------------
def test_flow_run_cli_with_input_data(tiny_sd: Path, tmp_path: Path, capsys) -> None:
    """`imagenodes flow run flow.json --input …` with the prompts as flow input data."""
    flow = seed_flow(tiny_sd.name, count=2)
    flow["steps"] = flow["steps"][1:]
    flow["steps"][0]["parameters"]["images"][0][0] = "@Map($.input.prompts)"
    flow["input"] = {
        "type": "object",
        "required": ["prompts"],
        "properties": {"prompts": {"type": "array", "items": {"type": "string"}}},
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow))
    conns = tmp_path / "connections.toml"
    conns.write_text(
        f'[connections.default]\ntype = "local_diffusers"\nmodel = "{tiny_sd}"\n'
        f'models_dir = "{tiny_sd.parent}"\n'
    )
    out = io.StringIO()
    argv = ["--workspace", str(tmp_path / "ws"), "--connections", str(conns), "flow", "run"]
    code = cli_main(
        [
            *argv,
            str(path),
            "--input",
            json.dumps({"prompts": ["a red circle", "a blue square"]}),
            "-q",
        ],
        out=out,
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.getvalue())
    assert len(result["results"]["dynamicImageGenerator"]["images"]) == 2
    assert result["steps"][0]["node"] == "image_generator"

    out = io.StringIO()
    assert cli_main([*argv[:4], "flow", "check", str(path)], out=out) == 0
    assert json.loads(out.getvalue())["steps"][0]["node"] == "image_generator"
    assert cli_main([*argv, str(path), "--input", "{}", "-q"], out=io.StringIO()) == 2


def test_load_flow_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ImageNodesError, match="cannot read flow file"):
        load_flow(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ImageNodesError, match="not valid JSON"):
        load_flow(tmp_path / "bad.json")
