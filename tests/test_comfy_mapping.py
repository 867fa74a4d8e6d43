"""ComfyUI's model mapped onto ours (imagenodes.flows.comfy): /object_info from the real
catalog, API graphs and editor workflows into flows that the flow runner runs, flows
back into graphs, ComfyUI-shaped validation errors, and ``imagenodes flow convert``.

Everything runs on the real host and nodes; the tests that generate use the embedded
model (2 steps, 1:1) and are slow."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagenodes import ConnectionRequirement, Host, Node, NodeInput, NodeOutput, hookimpl
from imagenodes.errors import ImageNodesError, InvalidFlow
from imagenodes.flows import FlowRunner
from imagenodes.flows.comfy import (
    ComfyGraphError,
    class_type,
    flow_to_graph,
    graph_to_flow,
    node_for_class,
    object_info,
    object_info_for,
    workflow_to_graph,
)
from imagenodes.sdk import MAX_SEED


# -- a pack with a node that cannot run here ------------------------------------------------
class _NeedsInput(NodeInput):
    text: str = ""


class _NeedsOutput(NodeOutput):
    text: str


class NeedsAConnection(Node[_NeedsInput, _NeedsOutput]):
    """Requires a connection category nobody configured: unavailable on every host."""

    id = "needs_a_connection"
    title = "Needs a connection"
    description = "Unavailable without its connection."
    Input = _NeedsInput
    Output = _NeedsOutput
    connections = (
        ConnectionRequirement(
            name="Nowhere", description="Never configured.", category="nowhere-test"
        ),
    )

    def run(self, inputs: _NeedsInput, ctx: Any) -> _NeedsOutput:
        return _NeedsOutput(text=inputs.text)


class NeedsPack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(NeedsAConnection)


@pytest.fixture(scope="module")
def host(make_host: Callable[..., Host]) -> Host:
    """The real built-in nodes on the embedded model (nothing generates in this tier)."""
    return make_host(plugins=[NeedsPack()])


@pytest.fixture(scope="module")
def info(host: Host) -> dict[str, dict[str, Any]]:
    return object_info(host)


def two_nodes(**second: Any) -> dict[str, Any]:
    """GenerateImageV2 → ImageToImage, wired by ``["1", 0]``: the smallest real graph."""
    return {
        "1": {
            "class_type": "GenerateImageV2",
            "inputs": {
                "prompt": "a red circle on a blue background",
                "negative_prompt": "",
                "aspect_ratio": "1:1",
                "steps": 2,
                "seed": 7,
            },
            "_meta": {"title": "Generate"},
        },
        "2": {
            "class_type": "ImageToImage",
            "inputs": {
                "source_image": ["1", 0],
                "prompt": "a green circle on a blue background",
                "negative_prompt": "",
                "strength": 0.9,
                "steps": 3,
                "seed": 3,
                **second,
            },
            "_meta": {"title": "Edit"},
        },
    }


def comfy_error(graph: Any, host: Host) -> ComfyGraphError:
    with pytest.raises(ComfyGraphError) as caught:
        graph_to_flow(graph, host)
    return caught.value


# -- class types ---------------------------------------------------------------------------
def test_class_types_are_the_camel_case_of_node_ids(host: Host) -> None:
    assert class_type("generate_image_v2") == "GenerateImageV2"
    assert class_type("image_to_image") == "ImageToImage"
    assert class_type("check-engine-status") == "CheckEngineStatus"
    assert node_for_class(host, "ImageToImage") == "image_to_image"
    assert node_for_class(host, "GenerateImageV2") == "generate_image_v2"
    assert node_for_class(host, "KSampler") is None
    assert node_for_class(host, "NeedsAConnection") == "needs_a_connection"
    # The runner reads a built-in's class type back as the same node: a step type as it
    # is.  (``NeedsAConnection`` it would read as ``needs_aconnection``: such a node's
    # steps get its id as their type.)
    runner = FlowRunner(host)
    for node_id in set(host.nodes) - {"needs_a_connection"}:
        assert runner.node_for(class_type(node_id)) == node_id


# -- /object_info --------------------------------------------------------------------------
def test_object_info_lists_every_available_node_in_comfyuis_shape(
    host: Host, info: dict[str, dict[str, Any]]
) -> None:
    available = {e["id"] for e in host.catalog() if e["availability"]["available"]}
    assert "needs_a_connection" not in available
    assert set(info) == {class_type(n) for n in available}
    assert object_info_for(host, "NeedsAConnection") == {}  # as ComfyUI: {} for unknown
    assert object_info_for(host, "Nope") == {}
    assert object_info_for(host, "ImageToImage") == {"ImageToImage": info["ImageToImage"]}
    required = {"name", "display_name", "description", "category", "output_node", "python_module"}
    for name, node in info.items():
        assert required <= set(node), name  # what the frontend's zod schema requires
        assert node["name"] == name
        assert node["python_module"] == "imagenodes"
        assert node["category"].startswith("imagenodes/")
        assert node["deprecated"] is False and node["experimental"] is False
        assert set(node["input"]) == {"required", "optional"}
        for section in ("required", "optional"):
            assert node["input_order"][section] == list(node["input"][section])
            for spec in node["input"][section].values():
                assert isinstance(spec, list) and len(spec) == 2 and "tooltip" in spec[1]
        count = len(node["output"])
        assert len(node["output_name"]) == len(node["output_is_list"]) == count
        assert node["output_is_list"] == [False] * count  # an IMAGE is a batch
        assert len(node["output_tooltips"]) == count
        assert node["output_node"] == ("IMAGE" in node["output"])


def test_input_specs_follow_the_json_schemas(info: dict[str, dict[str, Any]]) -> None:
    gen = info["GenerateImageV2"]
    assert gen["display_name"] == "Generate Image V2"
    assert gen["category"] == "imagenodes/image"
    assert gen["output_node"] is True
    assert (gen["output"], gen["output_name"]) == (["IMAGE"], ["images"])
    assert gen["input_order"]["required"] == ["prompt", "negative_prompt"]
    prompt = gen["input"]["required"]["prompt"]
    assert prompt[0] == "STRING" and prompt[1]["multiline"] is True
    assert "descriptive prompt" in prompt[1]["tooltip"]
    optional = gen["input"]["optional"]
    # exclusiveMinimum 0 on an integer is min 1; the maximum is the schema's.
    assert optional["steps"] == [
        "INT",
        {
            "default": 20,
            "min": 1,
            "max": 50,
            "step": 1,
            "tooltip": "The number of steps to take in the generated image.",
        },
    ]
    guidance = optional["guidance_scale"]
    assert guidance[0] == "FLOAT"
    assert (guidance[1]["min"], guidance[1]["max"], guidance[1]["default"]) == (0.01, 15, 8)
    assert guidance[1]["step"] == guidance[1]["round"] == 0.01
    # The seed: a 32-bit seed, as the nodes validate it; the editor adds its control.
    seed = optional["seed"]
    assert seed[0] == "INT"
    assert seed[1]["control_after_generate"] is True
    assert (seed[1]["min"], seed[1]["max"]) == (0, MAX_SEED)
    assert "default" not in seed[1]  # the node's default is "random" (null)
    # An enum is a COMBO: the list of values first.
    ratio = optional["aspect_ratio"]
    assert ratio[0][:3] == ["1:1", "3:4", "4:3"] and "9:16_HD" in ratio[0]
    assert ratio[1]["default"] == "9:16_HD"

    edit = info["ImageToImage"]
    assert edit["input"]["required"]["source_image"][0] == "IMAGE"  # a socket, no widget
    assert set(edit["input"]["required"]["source_image"][1]) == {"tooltip"}
    assert edit["input"]["required"]["negative_prompt"][1]["multiline"] is True
    assert edit["input"]["optional"]["prompt_2"][1]["multiline"] is True
    assert edit["input"]["optional"]["strength"][1]["min"] == 0.01
    assert edit["input"]["optional"]["strength"][1]["max"] == 1

    generation = info["ImageGeneration"]
    # Run-time choices of the catalog: the registered model families.
    model = generation["input"]["optional"]["model"]
    assert {"default", "embedded", "sd", "sdxl"} <= set(model[0])
    assert model[1]["default"] == "default"
    assert generation["input"]["optional"]["image_sources"][0] == "IMAGE"  # a list input
    assert generation["input"]["optional"]["use_cache"] == [
        "BOOLEAN",
        {"default": True, "tooltip": generation["input"]["optional"]["use_cache"][1]["tooltip"]},
    ]
    assert generation["input"]["optional"]["seed"][1]["max"] == MAX_SEED  # exclusiveMaximum
    assert "multiline" not in generation["input"]["optional"]["aspect_ratio"][1]

    # A list of request objects: JSON text in a multiline box.
    images = info["ImageGenerator"]["input"]["optional"]["images"]
    assert images[0] == "STRING" and images[1]["multiline"] is True
    assert images[1]["tooltip"].startswith("JSON")

    board = info["Checkerboard"]
    assert board["input"]["optional"]["size"][1] == {
        "default": 64,
        "min": 8,
        "max": 1024,
        "step": 1,
        "tooltip": "Side in pixels.",
    }
    assert board["input"]["optional"]["colour"] == [
        "STRING",
        {"default": "black", "tooltip": "Any PIL colour name."},
    ]
    assert (board["output"], board["output_name"], board["output_node"]) == (
        ["IMAGE"],
        ["image"],
        True,
    )


def test_outputs_put_images_first_then_typed_fields(info: dict[str, dict[str, Any]]) -> None:
    old = info["GenerateImage"]
    assert old["output_name"] == ["images", "content", "sessionId"]
    assert old["output"] == ["IMAGE", "*", "STRING"]
    status = info["CheckEngineStatus"]
    assert status["output_node"] is False
    types = dict(zip(status["output_name"], status["output"], strict=True))
    assert types["initialized"] == "BOOLEAN"
    assert types["loadMs"] == "FLOAT"
    assert types["status"] == "STRING"
    assert types["memory"] == "*"
    assert status["input"]["optional"]["initialize"][0] == "BOOLEAN"


# -- API graph → flow ------------------------------------------------------------------------
def test_a_graph_becomes_a_flow_in_dependency_order(host: Host) -> None:
    graph = two_nodes()
    graph = {"2": graph["2"], "1": graph["1"]}  # a consumer listed first
    flow = graph_to_flow(graph, host)
    assert [s.id for s in flow.steps] == ["1", "2"]
    assert [s.type for s in flow.steps] == ["GenerateImageV2", "ImageToImage"]
    first, second = flow.steps
    assert first.parameters == two_nodes()["1"]["inputs"]  # untouched, nothing added
    assert second.parameters["source_image"] == "$.results.1.images.0"
    assert second.model_extra == {"title": "Edit"}
    FlowRunner(host).preflight(flow)  # the runner accepts the result as it is


def test_image_links_become_the_builders_references(host: Host) -> None:
    graph = {
        "1": {"class_type": "GenerateImageV2", "inputs": {"prompt": "a", "negative_prompt": ""}},
        "c": {"class_type": "Checkerboard", "inputs": {"size": 64}},
        "m": {
            "class_type": "ImageGeneration",
            "inputs": {"prompt": "b", "image_sources": ["1", 0]},
        },
        "s": {
            "class_type": "ImageGeneration",
            "inputs": {"prompt": "c", "image_sources": ["c", 0]},
        },
        "e": {
            "class_type": "ImageToImage",
            "inputs": {"source_image": ["c", 0], "prompt": "d", "negative_prompt": ""},
        },
        "j": {
            "class_type": "ImageGenerator",
            "inputs": {"images": '[{"prompt": "e", "steps": 2, "width": 64, "height": 64}]'},
        },
        "k": {
            "class_type": "ImageGenerator",
            "inputs": {"images": {"__value__": [{"prompt": "f"}]}, "baseModel": ""},
        },
    }
    steps = {s.id: s.parameters for s in graph_to_flow(graph, host).steps}
    assert steps["m"]["image_sources"] == "$.results.1.images"  # a batch into a list
    assert steps["s"]["image_sources"] == ["$.results.c.image"]  # one image into a list
    assert steps["e"]["source_image"] == "$.results.c.image"  # one image into one
    assert steps["j"]["images"] == [{"prompt": "e", "steps": 2, "width": 64, "height": 64}]
    assert steps["k"]["images"] == [{"prompt": "f"}]
    assert steps["k"]["baseModel"] is None  # an empty text box in a nullable field


def test_a_batch_wired_into_a_list_input_passes_the_runners_preflight(host: Host) -> None:
    graph = {
        "1": {"class_type": "GenerateImageV2", "inputs": {"prompt": "a", "negative_prompt": ""}},
        "2": {
            "class_type": "ImageGeneration",
            "inputs": {"prompt": "b", "image_sources": ["1", 0]},
        },
    }
    FlowRunner(host).preflight(graph_to_flow(graph, host))


def test_node_errors_are_collected_across_nodes_with_our_codes(host: Host) -> None:
    graph = two_nodes(steps=80, guidance_scale=99)
    graph["1"]["inputs"]["steps"] = 80
    err = comfy_error(graph, host)
    assert isinstance(err, InvalidFlow) and err.is_user_error
    assert err.code == "INVALID_STEPS" and err.field == "1.inputs.steps"
    assert err.comfy_error["type"] == "prompt_outputs_failed_validation"
    assert err.comfy_error["message"] == "Prompt outputs failed validation"
    assert set(err.comfy_error) == {"type", "message", "details", "extra_info"}
    assert set(err.node_errors) == {"1", "2"}
    first = err.node_errors["1"]
    assert first["class_type"] == "GenerateImageV2"
    assert first["dependent_outputs"] == ["1", "2"]  # node 2 needs node 1's image
    (steps,) = first["errors"]
    assert steps["type"] == "value_bigger_than_max"
    assert steps["details"] == "steps"
    assert steps["extra_info"]["input_name"] == "steps"
    assert steps["extra_info"]["code"] == "INVALID_STEPS"
    assert steps["extra_info"]["received_value"] == 80
    assert "steps" in steps["message"] and "50" in steps["message"]
    second = err.node_errors["2"]
    assert second["dependent_outputs"] == ["2"]
    by_input = {e["extra_info"]["input_name"]: e["extra_info"]["code"] for e in second["errors"]}
    assert by_input == {"steps": "INVALID_STEPS", "guidance_scale": "INVALID_GUIDANCE_SCALE"}
    # The CLI prints details: every node's errors are there.
    assert err.to_dict()["details"]["node_errors"] == err.node_errors


def test_missing_inputs_bad_choices_and_json_are_node_errors(host: Host) -> None:
    graph = two_nodes()
    del graph["2"]["inputs"]["prompt"]
    graph["1"]["inputs"]["aspect_ratio"] = "2:1"
    graph["3"] = {
        "class_type": "ImageGeneration",
        "inputs": {"prompt": "x", "model": "nope"},
    }
    graph["4"] = {"class_type": "ImageGenerator", "inputs": {"images": "[{not json"}}
    graph["5"] = {"class_type": "ImageGenerator", "inputs": {"images": "[" * 100_000}}
    graph["6"] = {"class_type": "ImageGenerator", "inputs": {"images": " "}}  # empty: fine
    err = comfy_error(graph, host)
    kinds = {
        node: [
            (e["type"], e["extra_info"]["input_name"], e["extra_info"]["code"]) for e in n["errors"]
        ]
        for node, n in err.node_errors.items()
    }
    assert kinds == {
        "1": [("value_not_in_list", "aspect_ratio", "INVALID_ASPECT_RATIO")],
        "2": [("required_input_missing", "prompt", "EMPTY_PROMPT")],
        "3": [("value_not_in_list", "model", "INVALID_INPUT")],
        "4": [("invalid_input_type", "images", "INVALID_INPUT")],
        "5": [("invalid_input_type", "images", "INVALID_INPUT")],
    }
    assert "nested too deeply" in err.node_errors["5"]["errors"][0]["message"]


def test_a_linked_input_is_not_judged_by_its_placeholder(host: Host) -> None:
    """The wired image stands in as its reference; nothing else of the node is
    reported, and a linked non-image input (a STRING output into a text input) is left
    to run time."""
    graph = two_nodes()
    graph["3"] = {"class_type": "CreateSession", "inputs": {"name": "s"}}
    graph["4"] = {
        "class_type": "GenerateImage",
        "inputs": {"prompt": "a square", "steps": 2, "sessionId": ["3", 0]},
    }
    flow = graph_to_flow(graph, host)
    assert flow.steps[-1].parameters["sessionId"] == "$.results.3.sessionId"


def test_unknown_classes_and_unreadable_graphs_are_invalid_prompt(host: Host) -> None:
    graph = two_nodes()
    graph["3"] = {"class_type": "KSampler", "inputs": {}}
    err = comfy_error(graph, host)
    assert err.comfy_error["type"] == "invalid_prompt"
    assert err.comfy_error["message"] == "Cannot execute because node KSampler does not exist."
    assert err.comfy_error["details"].startswith("Node ID '#3'")
    assert err.node_errors == {} and err.code == "UNKNOWN_NODE"
    assert err.field == "3.class_type"

    err = comfy_error({"1": {"class_type": "NeedsAConnection", "inputs": {}}}, host)
    assert err.comfy_error["type"] == "invalid_prompt"
    assert "not available" in err.comfy_error["message"]

    twice = {1: two_nodes()["1"], "1": two_nodes()["1"]}
    bads: list[Any] = [[], "graph", {"1": {"inputs": {}}}, {"1": 5}, {"a.b": two_nodes()["1"]}]
    for bad in [*bads, twice]:
        assert comfy_error(bad, host).comfy_error["type"] == "invalid_prompt"


def test_bad_links_name_the_input(host: Host) -> None:
    cases: list[tuple[Any, str, str]] = [
        (["9", 0], "bad_linked_input", "not in the graph"),
        (["1", 3], "bad_linked_input", "has outputs 0–0: images"),
        (["1", 0, 1], "bad_linked_input", "length-2 list"),
        (["1", "0"], "bad_linked_input", "length-2 list"),
    ]
    for link, kind, words in cases:
        err = comfy_error(two_nodes(source_image=link), host)
        (error,) = err.node_errors["2"]["errors"]
        assert error["type"] == kind, link
        assert words in error["message"], error["message"]
        assert error["extra_info"]["input_name"] == "source_image"
        assert error["extra_info"]["code"] == "INVALID_FLOW"
    # A bad link does not hide the node's other problems.
    err = comfy_error(two_nodes(source_image=["9", 0], steps=80), host)
    kinds = [(e["type"], e["extra_info"]["input_name"]) for e in err.node_errors["2"]["errors"]]
    assert kinds == [("bad_linked_input", "source_image"), ("value_bigger_than_max", "steps")]
    # An IMAGE output into a text input: ComfyUI's return_type_mismatch.
    err = comfy_error(two_nodes(prompt=["1", 0]), host)
    (error,) = err.node_errors["2"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["extra_info"]["received_type"] == "IMAGE"
    assert error["extra_info"]["linked_node"] == ["1", 0]
    # Numeric node ids, as the editor's schema allows, are links too.
    flow = graph_to_flow(two_nodes(source_image=[1, 0]), host)
    assert flow.steps[1].parameters["source_image"] == "$.results.1.images.0"


def test_a_cycle_is_reported_on_the_nodes_in_it(host: Host) -> None:
    graph = two_nodes()
    graph["3"] = copy.deepcopy(graph["2"])
    graph["2"]["inputs"]["source_image"] = ["3", 0]
    graph["3"]["inputs"]["source_image"] = ["2", 0]
    graph["4"] = copy.deepcopy(graph["2"])
    graph["4"]["inputs"]["source_image"] = ["3", 0]  # after the cycle, not in it
    err = comfy_error(graph, host)
    assert set(err.node_errors) == {"2", "3"}
    for node in ("2", "3"):
        (error,) = err.node_errors[node]["errors"]
        assert error["type"] == "dependency_cycle"
        assert error["extra_info"]["input_name"] == "source_image"
        assert error["extra_info"]["code"] == "INVALID_FLOW"
        assert "cycle" in error["message"]
    assert err.node_errors["3"]["dependent_outputs"] == ["2", "3", "4"]


def test_a_graph_without_an_output_node_is_prompt_no_outputs(host: Host) -> None:
    err = comfy_error({"1": {"class_type": "CreateSession", "inputs": {}}}, host)
    assert err.comfy_error["type"] == "prompt_no_outputs"
    assert err.comfy_error["message"] == "Prompt has no outputs"
    assert err.node_errors == {}
    assert comfy_error({}, host).comfy_error["type"] == "prompt_no_outputs"


# -- flow → graph -------------------------------------------------------------------------
def builder_flow() -> dict[str, Any]:
    """A flow as the builder page saves it: wires, a flow input with a default,
    canvas positions, widgets."""
    return {
        "title": "Builder graph",
        "input": {
            "type": "object",
            "properties": {"gen_prompt": {"type": "string", "default": "a red circle"}},
        },
        "ui": {"results": {"widgets": [{"type": "Images", "sources": ["gen", "edit"]}]}},
        "steps": [
            {
                "id": "gen",
                "type": "generate_image_v2",
                "parameters": {
                    "prompt": "$.input.gen_prompt",
                    "negative_prompt": "",
                    "aspect_ratio": "1:1",
                    "steps": 2,
                    "seed": 5,
                },
            },
            {
                "id": "edit",
                "type": "ImageToImage",
                "parameters": {
                    "source_image": "$.results.gen.images[0]",
                    "prompt": "a green circle",
                    "negative_prompt": "",
                    "steps": 2,
                },
            },
            {
                "id": "mix",
                "type": "image_generation",
                "parameters": {"prompt": "both", "image_sources": "$.results.gen.images"},
            },
            {
                "id": "batch",
                "type": "ImageGenerator",
                "parameters": {"images": [{"prompt": "a star", "steps": 2}]},
            },
        ],
    }


def test_a_builder_flow_becomes_a_graph_and_back(host: Host) -> None:
    graph = flow_to_graph(builder_flow(), host)
    assert list(graph) == ["gen", "edit", "mix", "batch"]
    assert graph["gen"] == {
        "inputs": {
            "prompt": "a red circle",  # the flow input's default
            "negative_prompt": "",
            "aspect_ratio": "1:1",
            "steps": 2,
            "seed": 5,
        },
        "class_type": "GenerateImageV2",
        "_meta": {"title": "Generate Image V2"},
    }
    assert graph["edit"]["inputs"]["source_image"] == ["gen", 0]
    assert graph["mix"]["inputs"]["image_sources"] == ["gen", 0]
    assert json.loads(graph["batch"]["inputs"]["images"]) == [{"prompt": "a star", "steps": 2}]

    flow = graph_to_flow(graph, host)
    params = {s.id: s.parameters for s in flow.steps}
    assert params["edit"]["source_image"] == "$.results.gen.images.0"
    assert params["mix"]["image_sources"] == "$.results.gen.images"
    assert params["batch"]["images"] == [{"prompt": "a star", "steps": 2}]
    assert params["gen"]["prompt"] == "a red circle"
    # … and round again, unchanged both ways.
    assert flow_to_graph(flow, host) == graph
    again = graph_to_flow(flow_to_graph(flow, host), host)
    assert again.model_dump(exclude_unset=True) == flow.model_dump(exclude_unset=True)


def test_flow_references_a_graph_cannot_hold_are_refused_naming_the_step(host: Host) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("prompt", "$.input.missing", "no default"),
        ("source_image", "$.results.gen.images.1", "no ComfyUI form"),
        ("prompt", "$.results.gen.images.0", "no ComfyUI form"),
        ("prompt", ["@Map($.results.gen.images)", "$$"], "@Map"),
    ]
    for name, value, words in cases:
        flow = builder_flow()
        flow["steps"][1]["parameters"][name] = value
        with pytest.raises(ImageNodesError) as caught:
            flow_to_graph(flow, host)
        assert caught.value.code == "INVALID_FLOW", value
        assert caught.value.field == f"steps.edit.parameters.{name}"
        assert words in caught.value.message


# -- the editor's workflow -------------------------------------------------------------------
def editor_workflow() -> dict[str, Any]:
    """A workflow as ComfyUI's editor saves it (schema 0.4): GenerateImageV2 → a reroute →
    ImageToImage whose seed widget became an input fed by a primitive, a note, a muted
    node; every seed widget followed by its "control after generate" value."""
    return {
        "id": "6f1f8f3a-2c55-4a5e-9d8b-3b1f6f0a9c21",
        "revision": 0,
        "last_node_id": 8,
        "last_link_id": 3,
        "nodes": [
            {
                "id": 4,
                "type": "ImageToImage",
                "pos": [820, 140],
                "size": [400, 520],
                "flags": {},
                "order": 3,
                "mode": 0,
                "inputs": [
                    {"name": "source_image", "type": "IMAGE", "link": 2},
                    {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 3},
                ],
                "outputs": [{"name": "images", "type": "IMAGE", "links": None}],
                "title": "Make it green",
                "properties": {"Node name for S&R": "ImageToImage"},
                "widgets_values": [
                    "a green circle on a blue background",  # prompt
                    "",  # negative_prompt
                    "",  # prompt_2 (empty: not given)
                    7.5,  # guidance_scale
                    1.5,  # image_guidance_scale
                    0.9,  # strength
                    3,  # steps
                    1,  # batch_size
                    123,  # seed (the primitive's value wins)
                    "randomize",  # its control_after_generate
                    0,  # width
                    0,  # height
                ],
            },
            {
                "id": 3,
                "type": "GenerateImageV2",
                "pos": [60, 140],
                "size": [400, 460],
                "flags": {},
                "order": 0,
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "images", "type": "IMAGE", "links": [1], "slot_index": 0}],
                "properties": {"Node name for S&R": "GenerateImageV2"},
                "widgets_values": [
                    "a red circle on a blue background",
                    "",
                    8,
                    2,
                    1,
                    7,
                    "fixed",
                    "1:1",
                ],
            },
            {
                "id": 5,
                "type": "Reroute",
                "pos": [600, 160],
                "size": [75, 26],
                "flags": {},
                "order": 2,
                "mode": 0,
                "inputs": [{"name": "", "type": "*", "link": 1}],
                "outputs": [{"name": "", "type": "IMAGE", "links": [2], "slot_index": 0}],
                "properties": {"showOutputText": False, "horizontal": False},
            },
            {
                "id": 6,
                "type": "PrimitiveNode",
                "pos": [560, 420],
                "size": [210, 82],
                "flags": {},
                "order": 1,
                "mode": 0,
                "inputs": [],
                "outputs": [
                    {"name": "INT", "type": "INT", "widget": {"name": "seed"}, "links": [3]}
                ],
                "title": "seed",
                "properties": {"Run widget replace on values": False},
                "widgets_values": [11, "fixed"],
            },
            {
                "id": 7,
                "type": "Note",
                "pos": [60, 640],
                "size": [300, 90],
                "flags": {},
                "order": 4,
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {},
                "widgets_values": ["2 steps on the embedded model: quick to try"],
                "color": "#432",
                "bgcolor": "#653",
            },
            {
                "id": 8,
                "type": "GenerateImageV2",
                "pos": [60, 800],
                "size": [400, 460],
                "flags": {},
                "order": 5,
                "mode": 2,
                "inputs": [],
                "outputs": [{"name": "images", "type": "IMAGE", "links": []}],
                "properties": {"Node name for S&R": "GenerateImageV2"},
                "widgets_values": ["muted", "", 8, 20, 1, 0, "randomize", "9:16_HD"],
            },
        ],
        "links": [
            [1, 3, 0, 5, 0, "*"],
            [2, 5, 0, 4, 0, "IMAGE"],
            [3, 6, 0, 4, 1, "INT"],
        ],
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}, "frontendVersion": "1.28.7"},
        "version": 0.4,
    }


def test_an_editor_workflow_becomes_an_api_graph(host: Host) -> None:
    graph = workflow_to_graph(editor_workflow(), host)
    assert set(graph) == {"3", "4"}  # no reroute, primitive, note or muted node
    assert graph["3"] == {
        "inputs": {
            "prompt": "a red circle on a blue background",
            "negative_prompt": "",
            "guidance_scale": 8,
            "steps": 2,
            "batch_size": 1,
            "seed": 7,  # "fixed" after it was skipped
            "aspect_ratio": "1:1",
        },
        "class_type": "GenerateImageV2",
        "_meta": {"title": "Generate Image V2"},
    }
    edit = graph["4"]
    assert edit["_meta"] == {"title": "Make it green"}
    assert edit["inputs"]["source_image"] == ["3", 0]  # through the reroute
    assert edit["inputs"]["seed"] == 11  # the primitive's value
    assert edit["inputs"]["steps"] == 3
    assert edit["inputs"]["width"] == 0 and edit["inputs"]["height"] == 0
    flow = graph_to_flow(graph, host)
    assert [s.id for s in flow.steps] == ["3", "4"]
    assert flow.steps[1].parameters["prompt_2"] is None
    assert flow.steps[1].parameters["source_image"] == "$.results.3.images.0"


def test_workflow_schema_1_links_bypass_and_widget_dicts(host: Host) -> None:
    workflow = editor_workflow()
    workflow["version"] = 1
    workflow["links"] = [
        {"id": i, "origin_id": o, "origin_slot": s, "target_id": t, "target_slot": ts, "type": k}
        for i, o, s, t, ts, k in workflow["links"]
    ]
    # A bypassed image-to-image between the generator and node 4 passes its image on.
    workflow["nodes"].append(
        {
            "id": 9,
            "type": "ImageToImage",
            "mode": 4,
            "inputs": [{"name": "source_image", "type": "IMAGE", "link": 10}],
            "outputs": [{"name": "images", "type": "IMAGE", "links": [11]}],
            "widgets_values": {"prompt": "bypassed", "negative_prompt": ""},
        }
    )
    workflow["links"] += [
        {
            "id": 10,
            "origin_id": 3,
            "origin_slot": 0,
            "target_id": 9,
            "target_slot": 0,
            "type": "IMAGE",
        },
        {
            "id": 11,
            "origin_id": 9,
            "origin_slot": 0,
            "target_id": 4,
            "target_slot": 0,
            "type": "IMAGE",
        },
    ]
    workflow["nodes"][0]["inputs"][0]["link"] = 11
    workflow["nodes"][1]["widgets_values"] = {"prompt": "by name", "negative_prompt": "", "seed": 1}
    graph = workflow_to_graph(workflow, host)
    assert set(graph) == {"3", "4"}
    assert graph["4"]["inputs"]["source_image"] == ["3", 0]
    assert graph["3"]["inputs"] == {"prompt": "by name", "negative_prompt": "", "seed": 1}


def test_workflow_problems_are_invalid_prompt(host: Host) -> None:
    workflow = editor_workflow()
    workflow["nodes"][1]["type"] = "CheckpointLoaderSimple"
    with pytest.raises(ComfyGraphError) as caught:
        workflow_to_graph(workflow, host)
    assert caught.value.comfy_error["type"] == "invalid_prompt"
    assert "CheckpointLoaderSimple" in caught.value.comfy_error["message"]
    with pytest.raises(ComfyGraphError):
        workflow_to_graph({"nodes": "none"}, host)
    workflow = editor_workflow()
    workflow["links"] = workflow["links"][1:]  # node 5's input names a link that is gone
    with pytest.raises(ComfyGraphError) as caught:
        workflow_to_graph(workflow, host)
    assert "link 1" in caught.value.message
    # A link from a node that is not there stays, and graph_to_flow names it.
    workflow = editor_workflow()
    workflow["links"][0] = [1, 42, 0, 5, 0, "IMAGE"]
    graph = workflow_to_graph(workflow, host)
    assert graph["4"]["inputs"]["source_image"] == ["42", 0]
    err = comfy_error(graph, host)
    assert err.node_errors["4"]["errors"][0]["type"] == "bad_linked_input"


# -- the CLI ---------------------------------------------------------------------------------
def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagenodes.cli", "--workspace", str(tmp_path / "ws"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_flow_convert_command(tmp_path: Path) -> None:
    (tmp_path / "workflow.json").write_text(json.dumps(editor_workflow()))
    done = cli(tmp_path, "flow", "convert", "workflow.json", "-o", "flow.json")
    assert done.returncode == 0, done.stderr
    flow = json.loads((tmp_path / "flow.json").read_text())
    assert [s["id"] for s in flow["steps"]] == ["3", "4"]
    assert flow["steps"][1]["parameters"]["source_image"] == "$.results.3.images.0"
    assert "title" not in flow  # nothing invented
    checked = cli(tmp_path, "flow", "check", "flow.json")
    assert checked.returncode == 0, checked.stderr
    assert [s["node"] for s in json.loads(checked.stdout)["steps"]] == [
        "generate_image_v2",
        "image_to_image",
    ]
    # A flow → an API graph (stdout), and that graph (in a /prompt body) → a flow again.
    graph = cli(tmp_path, "flow", "convert", "flow.json")
    assert graph.returncode == 0, graph.stderr
    assert json.loads(graph.stdout)["4"]["inputs"]["source_image"] == ["3", 0]
    (tmp_path / "body.json").write_text(
        json.dumps({"client_id": "x", "prompt": json.loads(graph.stdout)})
    )
    again = cli(tmp_path, "flow", "convert", "body.json", "--to", "flow")
    assert json.loads(again.stdout)["steps"] == flow["steps"]
    # A workflow straight to an API graph.
    api = json.loads(cli(tmp_path, "flow", "convert", "workflow.json", "--to", "graph").stdout)
    assert api["3"] == json.loads(graph.stdout)["3"]
    assert api["4"]["inputs"]["source_image"] == ["3", 0]
    assert api["4"]["inputs"]["prompt_2"] == ""  # the editor's value, as it was

    # Bad input: exit 2, a coded JSON error with ComfyUI's node_errors.
    bad = two_nodes(steps=80)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    failed = cli(tmp_path, "flow", "convert", "bad.json")
    assert failed.returncode == 2
    error = json.loads(failed.stderr)["error"]
    assert error["code"] == "INVALID_STEPS" and error["field"] == "2.inputs.steps"
    assert error["details"]["node_errors"]["2"]["errors"][0]["extra_info"]["code"] == (
        "INVALID_STEPS"
    )
    (tmp_path / "broken.json").write_text("{nope")
    for args in (("broken.json",), ("missing.json",), ("flow.json", "--to", "flow")):
        failed = cli(tmp_path, "flow", "convert", *args)
        assert failed.returncode == 2, args
        assert json.loads(failed.stderr)["error"]["code"] == "INVALID_INPUT"


# -- running what was converted (generates: slow) -----------------------------------------------
def _consumed(host: Host, result: Any, step: str, source: str) -> None:
    """Step ``step`` ran on ``source``'s first image (its run record's input)."""
    record = next(s for s in result.steps if s.id == step)
    run = host.workspace.read_json(f"runs/{record.run_id}/run.json")
    assert run["inputs"]["source_image"] == result.results[source]["images"][0]


@pytest.mark.slow
def test_a_converted_graph_runs_on_the_embedded_model(embedded_host_session: Host) -> None:
    host = embedded_host_session
    result = FlowRunner(host).run(graph_to_flow(two_nodes(), host))
    assert [s.id for s in result.steps] == ["1", "2"]
    assert len(result.results["2"]["images"]) == 1
    _consumed(host, result, "2", "1")


@pytest.mark.slow
def test_a_converted_editor_workflow_runs(embedded_host_session: Host) -> None:
    host = embedded_host_session
    flow = graph_to_flow(workflow_to_graph(editor_workflow(), host), host)
    result = FlowRunner(host).run(flow)
    assert result.steps[1].seeds == [11]  # the primitive's seed
    _consumed(host, result, "4", "3")


@pytest.mark.slow
def test_flow_run_runs_a_converted_workflow(tmp_path: Path) -> None:
    (tmp_path / "workflow.json").write_text(json.dumps(editor_workflow()))
    assert cli(tmp_path, "flow", "convert", "workflow.json", "-o", "flow.json").returncode == 0
    done = cli(tmp_path, "flow", "run", "flow.json", "-q")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [s["node"] for s in result["steps"]] == ["generate_image_v2", "image_to_image"]
    assert len(result["results"]["4"]["images"]) == 1
