"""Connections: where they come from, in which order, how they fail, and that a
secret never leaves the store — checked on a real generation's files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from pydantic import Field, SecretStr

from imagenodes import (
    ConnectionRequirement,
    Host,
    ImageNodesError,
    Node,
    NodeInput,
    NodeOutput,
    embedded_model_path,
    hookimpl,
)
from imagenodes.connections import Connection, LocalDiffusersConnection
from imagenodes.connections.store import ENV_FILE, default_config_file
from imagenodes.registry.context import RunContext
from imagenodes.workspace.png import read_png_metadata

TOKEN = "hf_TopSecret_0123456789abcdefXYZ"


def files_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def connection_error(fn: Callable[[], Any]) -> ImageNodesError:
    with pytest.raises(ImageNodesError) as info:
        fn()
    assert info.value.code == "CONNECTION_ERROR", info.value.to_dict()
    assert info.value.is_user_error
    return info.value


# -- sources ---------------------------------------------------------------------------
def test_default_connection_exists_with_the_embedded_model(ws: Path) -> None:
    store = Host(ws).connections
    assert store.names() == ["default"]
    conn = store.get("default")
    assert isinstance(conn, LocalDiffusersConnection)
    assert conn.model == str(embedded_model_path())
    assert (conn.device, conn.dtype, conn.offline, conn.hub_token) == ("auto", "auto", True, None)
    assert conn.category == "pixelml" and conn.type_name == "local_diffusers"
    assert store.for_category("pixelml") is conn


def test_connections_from_code(ws: Path) -> None:
    host = Host(ws, connections={"gpu": {"model": "/models/sdxl", "device": "cpu"}})
    gpu = host.connections.get("gpu")
    assert (gpu.model, gpu.device) == ("/models/sdxl", "cpu")
    # Both are pixelml: the default wins unless the caller names one.
    assert host.connections.for_category("pixelml").model == str(embedded_model_path())
    assert host.connections.for_category("pixelml", "gpu") is gpu
    made = LocalDiffusersConnection(model="/models/sd15", dtype="float32")
    assert host.connections.add("gpu", made) is made
    assert host.connections.get("gpu") is made


def test_connections_from_a_toml_file_named_by_env(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path / "conn.toml",
        """
        [connections.default]
        type = "local_diffusers"
        model = "/models/sd15"
        device = "cpu"

        [connections.gpu]
        model = "stabilityai/sdxl-turbo"
        models_dir = "/srv/models"
        offline = false
        """,
    )
    monkeypatch.setenv(ENV_FILE, str(path))
    store = Host(ws).connections
    assert store.names() == ["default", "gpu"]
    assert (store.get("default").model, store.get("default").device) == ("/models/sd15", "cpu")
    gpu = store.get("gpu")
    assert gpu.type_name == "local_diffusers"  # the type defaults
    assert (gpu.models_dir, gpu.offline) == ("/srv/models", False)


def test_connections_from_the_user_config_dir(ws: Path, user_config_dir: Path) -> None:
    # The root conftest gives every test a private, empty user config dir.
    path = user_config_dir / "imagenodes" / "connections.toml"
    assert default_config_file() == path  # platformdirs honours XDG_CONFIG_HOME
    write_toml(path, '[connections.default]\nmodel = "/from/user/config"\n')
    assert Host(ws).connections.get("default").model == "/from/user/config"


def test_connections_from_env_vars(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGENODES_CONNECTION_DEFAULT_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("IMAGENODES_CONNECTION_GPU_MODEL", "/models/sdxl")
    monkeypatch.setenv("IMAGENODES_CONNECTION_GPU_DEVICE", "cuda")
    monkeypatch.setenv("IMAGENODES_CONNECTION_GPU_OFFLINE", "false")
    monkeypatch.setenv("IMAGENODES_CONNECTION_GPU_HUB_TOKEN", TOKEN)
    store = Host(ws).connections
    default = store.get("default")
    assert default.models_dir == "/srv/models"  # a field name with an underscore
    assert default.model == str(embedded_model_path())  # the rest keeps its defaults
    gpu = store.get("gpu")
    assert (gpu.model, gpu.device, gpu.offline) == ("/models/sdxl", "cuda", False)
    assert isinstance(gpu.hub_token, SecretStr) and gpu.hub_token.get_secret_value() == TOKEN


def test_precedence_default_then_file_then_env_then_code(
    ws: Path, tmp_path: Path, user_config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_file = user_config_dir / "imagenodes" / "connections.toml"
    write_toml(user_file, '[connections.user]\nmodel = "u"\n')
    env_file = write_toml(
        tmp_path / "env.toml",
        '[connections.default]\nmodel = "/file/model"\ndevice = "cpu"\ndtype = "float32"\n',
    )
    monkeypatch.setenv(ENV_FILE, str(env_file))
    monkeypatch.setenv("IMAGENODES_CONNECTION_DEFAULT_MODEL", "/env/model")

    host = Host(ws)
    default = host.connections.get("default")
    # The env var overrides one field of the file's connection; the others stay.
    assert (default.model, default.device, default.dtype) == ("/env/model", "cpu", "float32")
    # IMAGENODES_CONNECTIONS is used instead of the user config file, not on top of it.
    assert "user" not in host.connections.names()

    # Code replaces the connection as a whole.
    host = Host(ws, connections={"default": {"model": "/code/model"}})
    default = host.connections.get("default")
    assert (default.model, default.device) == ("/code/model", "auto")

    # An explicit file wins over IMAGENODES_CONNECTIONS.
    explicit = write_toml(tmp_path / "explicit.toml", '[connections.other]\nmodel = "o"\n')
    names = Host(ws, connections_file=explicit).connections.names()
    assert "other" in names and "user" not in names
    assert Host(ws, connections_file=explicit).connections.get("default").model == "/env/model"


# -- failures --------------------------------------------------------------------------
def test_invalid_device_names_connection_and_field(ws: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", '[connections.default]\ndevice = "tpu"\n')
    host = Host(ws, connections_file=path)
    err = connection_error(lambda: host.connections.get("default"))
    assert err.field == "device"
    assert "'default'" in err.message and "'device'" in err.message and "'cuda'" in err.message
    # The catalog says why the nodes cannot run, and running says the same.
    entry = next(e for e in host.catalog() if e["id"] == "generate_image_v2")
    assert entry["availability"]["available"] is False
    assert "device" in entry["availability"]["reason"]
    err = connection_error(
        lambda: host.run("generate_image_v2", {"prompt": "a", "negative_prompt": ""})
    )
    assert err.field == "device" and err.message.startswith("PixelML Connection: ")
    assert files_in(ws) == []


def test_invalid_value_from_code_fails_when_added(ws: Path) -> None:
    err = connection_error(lambda: Host(ws, connections={"fast": {"dtype": "int4"}}))
    assert err.field == "dtype" and "'fast'" in err.message


def test_unknown_field_is_named(ws: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "c.toml", '[connections.default]\ncolour = "red"\n')
    err = connection_error(lambda: Host(ws, connections_file=path).connections.get("default"))
    assert err.field == "colour" and "'default'" in err.message


def test_unknown_type_is_named(ws: Path, tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        '[connections.remote]\ntype = "openai"\n\n[connections.default]\ntype = "dalle"\n',
    )
    host = Host(ws, connections_file=path)
    err = connection_error(lambda: host.connections.get("remote"))
    assert err.field == "type"
    assert "'remote'" in err.message and "'openai'" in err.message
    assert "local_diffusers" in err.message  # what is registered instead
    # A default of an unknown type is reported as such, not as "nothing configured".
    err = connection_error(
        lambda: host.run("generate_image_v2", {"prompt": "a", "negative_prompt": ""})
    )
    assert err.field == "type" and "'dalle'" in err.message
    assert "'openai'" in host.connections.public()["remote"]["error"]


def test_missing_file_named_by_env(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv(ENV_FILE, str(missing))
    err = connection_error(lambda: Host(ws))
    assert err.field == ENV_FILE and str(missing) in err.message


def test_missing_or_malformed_explicit_file(ws: Path, tmp_path: Path) -> None:
    err = connection_error(lambda: Host(ws, connections_file=tmp_path / "nowhere.toml"))
    assert err.field == "connections_file" and "nowhere.toml" in err.message
    bad = write_toml(tmp_path / "bad.toml", "[connections.default\nmodel = 1\n")
    err = connection_error(lambda: Host(ws, connections_file=bad))
    assert err.field == "connections_file" and "bad.toml" in err.message


def test_unknown_connection_name(ws: Path) -> None:
    host = Host(ws)
    err = connection_error(lambda: host.connections.get("gpu"))
    assert err.field == "connection" and "'gpu'" in err.message and "default" in err.message
    err = connection_error(
        lambda: host.run(
            "generate_image_v2",
            {"prompt": "a", "negative_prompt": ""},
            connections={"pixelml": "gpu"},
        )
    )
    assert "PixelML Connection" in err.message and "'gpu'" in err.message
    assert files_in(ws) == []


# -- a category nobody configured ------------------------------------------------------
FARM = ConnectionRequirement(
    name="Render Farm Connection",
    description="Where frames are rendered.",
    category="render_farm",
)


class FarmInput(NodeInput):
    """Farm input."""

    frames: int = Field(default=1, ge=1, le=10, description="How many frames.")


class FarmOutput(NodeOutput):
    """Farm output."""

    image: str = Field(description="Workspace file reference.")
    url: str = Field(description="Where the farm is.")


class FarmNode(Node):
    id = "farm_render"
    title = "Farm render"
    description = "Needs a render_farm connection."
    Input = FarmInput
    Output = FarmOutput
    connections: ClassVar[tuple[ConnectionRequirement, ...]] = (FARM,)

    def run(self, inputs: FarmInput, ctx: RunContext) -> FarmOutput:
        conn = ctx.connection("render_farm")
        ref = ctx.images.save(Image.new("RGB", (8, 8), "blue"), {"frames": inputs.frames})
        return FarmOutput(image=ref, url=conn.url)  # type: ignore[attr-defined]


class RenderFarm(Connection):
    """A connection type of another category, registered by a plugin."""

    type_name: ClassVar[str] = "render_farm"
    category: ClassVar[str] = "render_farm"

    url: str = Field(description="Farm URL.")
    api_key: SecretStr | None = Field(default=None, description="Farm key.")


class FarmNodePack:
    @hookimpl
    def register_nodes(self, register: Callable[[type], None]) -> None:
        register(FarmNode)


class FarmTypePack:
    @hookimpl
    def register_connection_types(self, register: Callable[[type], None]) -> None:
        register(RenderFarm)


def test_node_whose_category_has_no_connection_is_unavailable(ws: Path) -> None:
    host = Host(ws, plugins=[FarmNodePack()])
    entry = next(e for e in host.catalog() if e["id"] == "farm_render")
    assert entry["availability"]["available"] is False
    assert "render_farm" in entry["availability"]["reason"]
    # The pixelml nodes are unaffected.
    v2 = next(e for e in host.catalog() if e["id"] == "generate_image_v2")
    assert v2["availability"]["available"] is True
    err = connection_error(lambda: host.run("farm_render", {}))
    assert err.field == "connection"
    assert "Render Farm Connection" in err.message and "'render_farm'" in err.message
    assert files_in(ws) == []


def test_plugin_connection_type_makes_the_node_available(ws: Path, tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        f'[connections.farm]\ntype = "render_farm"\nurl = "https://farm.test"\n'
        f'api_key = "{TOKEN}"\n',
    )
    host = Host(ws, connections_file=path, plugins=[FarmNodePack(), FarmTypePack()])
    entry = next(e for e in host.catalog() if e["id"] == "farm_render")
    assert entry["availability"] == {"available": True, "reason": None}
    result = host.run("farm_render", {"frames": 2})
    assert result.outputs["url"] == "https://farm.test"
    assert host.connections.public()["farm"]["api_key"] == "**********"
    assert TOKEN not in json.dumps(result.to_dict())
    for path in files_in(ws):
        assert TOKEN.encode() not in path.read_bytes()


# -- secrets ---------------------------------------------------------------------------
def test_secret_is_masked_in_catalog_public_and_repr(ws: Path) -> None:
    host = Host(ws, connections={"default": {"hub_token": TOKEN}})
    conn = host.connections.get("default")
    assert conn.hub_token is not None and conn.hub_token.get_secret_value() == TOKEN
    assert TOKEN not in json.dumps(host.catalog())
    public = host.connections.public()
    assert public["default"]["hub_token"] == "**********"
    assert TOKEN not in json.dumps(public)
    assert TOKEN not in repr(conn) and TOKEN not in str(conn)
    assert TOKEN not in conn.model_dump_json()
    assert LocalDiffusersConnection.secret_fields() == ["hub_token"]


def test_secret_never_in_connection_errors(ws: Path, tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        f'[connections.default]\nhub_token = "{TOKEN}"\ndevice = "tpu"\n',
    )
    host = Host(ws, connections_file=path)
    err = connection_error(
        lambda: host.run("generate_image_v2", {"prompt": "a", "negative_prompt": ""})
    )
    assert TOKEN not in json.dumps(err.to_dict()) and TOKEN not in str(err)
    # A token of the wrong type is named by field, never echoed.
    bad = write_toml(tmp_path / "bad.toml", f'[connections.x]\nhub_token = ["{TOKEN}"]\n')
    err = connection_error(lambda: Host(ws, connections_file=bad).connections.get("x"))
    assert err.field == "hub_token" and TOKEN not in str(err) and TOKEN not in err.message
    entry = next(
        e for e in Host(ws, connections_file=path).catalog() if e["id"] == "image_to_image"
    )
    assert TOKEN not in json.dumps(entry)


def test_secret_never_reaches_results_run_json_or_png_metadata(tiny_sd: Path, ws: Path) -> None:
    """A real generation with a token configured: search everything it produced."""
    from conftest import TinyProfiles

    host = Host(
        ws,
        connections={"default": {"model": str(tiny_sd), "hub_token": TOKEN}},
        plugins=[TinyProfiles()],
    )
    events: list[Any] = []
    result = host.run(
        "generate_image_v2",
        {"prompt": "a red circle", "negative_prompt": "", "steps": 2, "aspect_ratio": "1:1"},
        on_event=events.append,
    )
    assert TOKEN not in json.dumps(result.to_dict())
    assert TOKEN not in json.dumps(result.effective)
    for event in events:  # the event stream is what a builder logs
        assert TOKEN not in json.dumps(event.to_dict(), default=str) and TOKEN not in str(event)

    files = files_in(ws)
    names = {p.name for p in files}
    assert "run.json" in names and "image-0.png" in names
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data, path
        if path.suffix == ".png":
            # Text chunks can be compressed; read them decoded as well.
            meta = read_png_metadata(data)
            assert meta and TOKEN not in json.dumps(meta), path
    record = json.loads((ws / "runs" / result.run_id / "run.json").read_text())
    assert TOKEN not in json.dumps(record)
    assert record["effective"][0]["model"].endswith("tiny-sd")  # the connection was used
    assert record["connections"]["pixelml"]["hub_token"] == "**********"  # recorded, masked
