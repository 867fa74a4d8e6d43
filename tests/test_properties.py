"""Property-based: over every node's catalog schema, a value the schema accepts never
ends as GENERATION_FAILED, and junk always gets an input code (issue #14 §4).

Valid inputs come from the catalog's own JSON Schemas (hypothesis-jsonschema), with
the costly knobs narrowed (steps ≤ 2, sides ≤ 64, counts ≤ 2) so that each example is
a real run of the embedded model in well under a second.  Image inputs (the catalog's
``image_fields``) are drawn from real and broken references.  The number of examples
is ``IMAGENODES_PROPERTY_EXAMPLES`` (default 5 per node for valid inputs, four times
that for junk, which never reaches a pipeline).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from PIL import Image

from imagenodes import Host, ImageNodesError
from imagenodes.errors import USER_ERROR_CODES
from imagenodes.workspace import image_to_data_uri

EXAMPLES = int(os.environ.get("IMAGENODES_PROPERTY_EXAMPLES", "5"))
#: Codes that say "your input or configuration", not "the generation broke".
INPUT_CODES = USER_ERROR_CODES

#: Narrowed maxima by field name, wherever the field sits (nested requests too).
NARROW = {
    "steps": 2,
    "width": 64,
    "height": 64,
    "batch_size": 2,
    "batchSize": 2,
    "num_images": 2,
    "size": 64,
    "squares": 8,
    "limit": 5,
}


def _narrow(node: Any) -> Any:
    """A copy of a JSON Schema with costly numbers capped and lists kept short."""
    if isinstance(node, list):
        return [_narrow(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _narrow(value) for key, value in node.items()}
    for name, prop in out.get("properties", {}).items():
        cap = NARROW.get(name)
        for alt in [prop, *prop.get("anyOf", [])]:
            if cap is not None and alt.get("type") in ("integer", "number"):
                alt["maximum"] = min(alt.get("maximum", cap), cap)
                alt.pop("exclusiveMaximum", None)
        if name == "image_size":
            prop["enum"] = ["native"]  # 1K/2K only change the cap notice, at a cost
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", 2), 2)
    if out.get("type") == "string" and "enum" not in out:
        out.setdefault("maxLength", 60)
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    ws = tmp_path_factory.mktemp("property-ws")
    Image.new("RGB", (40, 24), (0, 120, 200)).save(ws / "source.png")
    return Host(ws)


def _image_values() -> st.SearchStrategy[str]:
    good = image_to_data_uri(Image.new("RGB", (48, 32), (200, 40, 40)))
    return st.sampled_from(
        [
            good,
            "source.png",  # a workspace path
            "missing.png",
            "../outside.png",
            "data:image/png;base64,AAAA",
            "http://127.0.0.1:9/x.png",  # refused by the URL policy before connecting
            "not an image at all",
        ]
    )


def _inputs(entry: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    schema = _narrow(copy.deepcopy(entry["input_schema"]))
    images = entry["image_fields"]["inputs"]
    for name in images:  # image sockets get real and broken references instead
        schema["properties"].pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    base = from_schema(schema)
    if not images:
        return base
    extra = {
        name: (st.lists(_image_values(), max_size=2) if kind == "list" else _image_values())
        for name, kind in images.items()
    }
    return st.tuples(base, st.fixed_dictionaries(extra)).map(lambda p: {**p[0], **p[1]})


#: The catalog as a builder sees it (built at collection: parametrises the tests).
ENTRIES = {entry["id"]: entry for entry in Host(tempfile.mkdtemp()).catalog()}


def _outcome(host: Host, node: str, inputs: dict[str, Any]) -> str:
    """ "ok" or the error's code; anything but an ImageNodesError fails the test."""
    try:
        host.run(node, inputs, timeout=120)
    except ImageNodesError as err:
        return err.code
    return "ok"


@pytest.mark.slow
@pytest.mark.parametrize("node", sorted(ENTRIES))
def test_inputs_the_schema_accepts_never_fail_the_generation(host: Host, node: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(inputs=_inputs(ENTRIES[node]))
    def check(inputs: dict[str, Any]) -> None:
        code = _outcome(host, node, inputs)
        assert code == "ok" or code in INPUT_CODES, (node, inputs, code)

    check()


# -- junk ------------------------------------------------------------------------------
JUNK = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2),
    st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=2),
    st.sampled_from([2**70, -(2**70), math.nan, math.inf, -math.inf]),
    st.just("x" * 20_001),
    st.just({"nested": {"deeper": [1, {"x": None}]}}),
)


def _junk_for(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Junk no JSON Schema type of ``prop`` admits and pydantic cannot coerce."""
    kinds = {prop.get("type"), *(alt.get("type") for alt in prop.get("anyOf", []))}
    pick = JUNK
    if "object" in kinds:
        pick = st.sampled_from([2**70, math.nan, "x" * 20_001])
    if "array" in kinds:
        pick = st.sampled_from([2**70, math.nan, {"nested": {"deeper": [1]}}])
    return pick


def _junk_inputs(entry: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    # Image inputs are strings of any length (a data URI); their junk is tested in
    # test_image_inputs.py through a run, as it is found when loading.
    images = entry["image_fields"]["inputs"]
    props = {
        name: prop
        for name, prop in entry["input_schema"].get("properties", {}).items()
        if name not in images
    }
    names = sorted(props)
    if not names:
        return st.fixed_dictionaries({"no_such_field": JUNK})
    unknown = st.fixed_dictionaries({"no_such_field": JUNK})
    return st.one_of(
        unknown,
        st.sampled_from(names).flatmap(
            lambda name: st.fixed_dictionaries({name: _junk_for(props[name])})
        ),
    )


@pytest.mark.parametrize("node", sorted(ENTRIES))
def test_junk_always_gets_an_input_code(host: Host, node: str) -> None:
    @settings(max_examples=EXAMPLES * 4, deadline=None, database=None)
    @given(inputs=_junk_inputs(ENTRIES[node]))
    def check(inputs: dict[str, Any]) -> None:
        with pytest.raises(ImageNodesError) as err:
            host.validate(node, inputs)
        assert err.value.code in INPUT_CODES, (node, inputs, err.value.to_dict())
        assert err.value.field, err.value.to_dict()  # names what was wrong
        assert len(err.value.message) < 500  # the junk is not echoed back whole

    check()


def test_the_narrowed_schemas_still_describe_the_nodes() -> None:
    """The narrowing keeps every field and only lowers maxima (never widens)."""
    for entry in ENTRIES.values():
        schema = entry["input_schema"]
        narrowed = _narrow(copy.deepcopy(schema))
        assert set(narrowed.get("properties", {})) == set(schema.get("properties", {}))
        for name, prop in schema.get("properties", {}).items():
            if "maximum" in prop:
                assert narrowed["properties"][name]["maximum"] <= prop["maximum"]
