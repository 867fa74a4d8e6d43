"""Workspace libraries: trainings, inference packs and sessions (no generation here)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from imagenodes import Host, ImageNodesError, InputError
from imagenodes.cli import main as cli_main
from imagenodes.library import InferencePackStore, SessionStore, TrainingStore
from imagenodes.library.trainings import WEIGHT_NAME
from imagenodes.nodes.image_generator import ImageGenerator
from imagenodes.workspace import Workspace
from tests.helpers import INSTALLED_PACKS


def fake_lora(folder: Path, seed: int = 0) -> Path:
    """A diffusers-layout LoRA file (names only matter to the store, not to a model)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "unet.mid_block.attn1.to_q.lora.down.weight": rng.standard_normal(
                (4, 32), dtype=np.float32
            ),
            "unet.mid_block.attn1.to_q.lora.up.weight": rng.standard_normal(
                (32, 4), dtype=np.float32
            ),
        },
        str(folder / WEIGHT_NAME),
    )
    return folder


@pytest.fixture
def host(make_host: Callable[..., Host], tmp_path: Path) -> Host:
    return make_host(workspace=tmp_path / "ws")


def cli(tmp_path: Path, *argv: str) -> tuple[int, object]:
    out = io.StringIO()
    code = cli_main(["--workspace", str(tmp_path / "ws"), *argv], out=out)
    return code, json.loads(out.getvalue()) if out.getvalue().strip() else None


# -- trainings -------------------------------------------------------------------------
def test_host_exposes_the_three_stores(host: Host) -> None:
    assert isinstance(host.trainings, TrainingStore)
    assert isinstance(host.packs, InferencePackStore)
    assert isinstance(host.sessions, SessionStore)
    # "packs" means inference packs only; plugin packs are listed by plugin_packs().
    assert not callable(host.packs)
    names = {p["name"] for p in host.plugin_packs()}
    assert names == INSTALLED_PACKS


def test_training_is_copied_into_the_workspace_and_recorded(host: Host, tmp_path: Path) -> None:
    tid = str(uuid.uuid4())
    source = fake_lora(tmp_path / "lora")
    record = host.trainings.add(tid.upper(), source, base_model="some/model", name="cats")
    assert record["id"] == tid  # normalised spelling
    assert record["base_model"] == "some/model" and record["tensors"] == 2
    folder = tmp_path / "ws" / "trainings" / tid
    assert (folder / WEIGHT_NAME).read_bytes() == (source / WEIGHT_NAME).read_bytes()
    assert json.loads((folder / "training.json").read_text())["name"] == "cats"
    assert host.trainings.get(tid)["sha256"] == record["sha256"]
    assert [t["id"] for t in host.trainings.list()] == [tid]
    assert host.trainings.weights_path(tid) == str(folder)
    # The source may go away: the workspace copy is what generation uses.
    (source / WEIGHT_NAME).unlink()
    assert (Path(host.trainings.weights_path(tid)) / WEIGHT_NAME).is_file()


def test_training_file_path_and_overwrite(host: Host, tmp_path: Path) -> None:
    tid = str(uuid.uuid4())
    weights = fake_lora(tmp_path / "a") / WEIGHT_NAME
    host.trainings.add(tid, weights)
    with pytest.raises(InputError, match="already registered"):
        host.trainings.add(tid, weights)
    other = fake_lora(tmp_path / "b", seed=1)
    assert host.trainings.add(tid, other, overwrite=True)["source"].startswith(str(other))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "x.bin").write_bytes(b"x") and p / "x.bin", "not a .safetensors"),
        (lambda p: (p / "x.safetensors").write_bytes(b"junk") and p / "x.safetensors", "readable"),
    ],
)
def test_training_add_refuses_what_is_not_a_lora(host: Host, tmp_path: Path, make, message) -> None:
    with pytest.raises(InputError, match=message):
        host.trainings.add(str(uuid.uuid4()), make(tmp_path))


def test_training_add_refuses_weights_without_lora_tensors(host: Host, tmp_path: Path) -> None:
    save_file({"unet.conv.weight": np.zeros(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(InputError, match="no LoRA tensors"):
        host.trainings.add(str(uuid.uuid4()), tmp_path / "plain.safetensors")


def test_unknown_or_malformed_training_ids(host: Host, tmp_path: Path) -> None:
    with pytest.raises(ImageNodesError) as info:
        host.trainings.get(str(uuid.uuid4()), field="images.2.trainingId")
    assert info.value.code == "UNKNOWN_TRAINING" and info.value.field == "images.2.trainingId"
    assert "trainings add" in info.value.solution
    with pytest.raises(ImageNodesError) as info:
        host.trainings.get("../../etc")
    assert info.value.code == "UNKNOWN_TRAINING" and "UUID" in info.value.message
    with pytest.raises(InputError, match="UUID"):
        host.trainings.add("not-a-uuid", fake_lora(tmp_path / "l"))


def test_non_local_workspace_materialises_weights_for_diffusers(tmp_path: Path) -> None:
    store = TrainingStore(Workspace(f"memory://trainings-{uuid.uuid4().hex}"))
    tid = str(uuid.uuid4())
    source = fake_lora(tmp_path / "lora")
    store.add(tid, source)
    local = Path(store.weights_path(tid))
    assert (local / WEIGHT_NAME).read_bytes() == (source / WEIGHT_NAME).read_bytes()


def test_trainings_cli(tmp_path: Path) -> None:
    tid = str(uuid.uuid4())
    code, record = cli(tmp_path, "trainings", "add", tid, str(fake_lora(tmp_path / "l")))
    assert code == 0 and record["id"] == tid
    code, listed = cli(tmp_path, "trainings", "list")
    assert [t["id"] for t in listed] == [tid]
    assert cli(tmp_path, "trainings", "show", str(uuid.uuid4()))[0] == 2  # UNKNOWN_TRAINING
    assert cli(tmp_path, "trainings", "remove", tid)[0] == 0
    assert cli(tmp_path, "trainings", "list")[1] == []


# -- inference packs -------------------------------------------------------------------
def test_pack_stores_only_what_was_set(host: Host) -> None:
    pack = host.packs.create(
        [{"prompt": "a red circle", "steps": 2}, {"prompt": "a blue square", "batchSize": 2}],
        name="shapes",
    )
    uuid.UUID(pack["id"])
    stored = json.loads((Path(host.workspace.root) / "packs" / f"{pack['id']}.json").read_text())
    # No defaults baked in: the run's global baseModel/trainingId still apply later.
    assert stored["images"] == [
        {"prompt": "a red circle", "steps": 2},
        {"prompt": "a blue square", "batchSize": 2},
    ]
    assert host.packs.get(pack["id"].upper())["name"] == "shapes"
    assert [p["id"] for p in host.packs.list()] == [pack["id"]]
    host.packs.remove(pack["id"])
    assert host.packs.list() == []


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        ({"prompt": ""}, "EMPTY_PROMPT", "images.0.prompt"),
        ({"prompt": "x", "width": 100}, "INVALID_DIMENSIONS", "images.0.width"),
        ({"prompt": "x", "height": 4096}, "INVALID_DIMENSIONS", "images.0.height"),
        ({"prompt": "x", "steps": 61}, "INVALID_STEPS", "images.0.steps"),
        ({"prompt": "x", "batchSize": 5}, "BATCH_SIZE_EXCEEDED", "images.0.batchSize"),
        ({"prompt": "x", "precision": "fp8"}, "INVALID_INPUT", "images.0.precision"),
        ({"prompt": "x", "colour": "red"}, "INVALID_INPUT", "images.0.colour"),
    ],
)
def test_pack_requests_are_validated_like_the_node(host: Host, request_, code, field) -> None:
    with pytest.raises(ImageNodesError) as info:
        host.packs.create([request_])
    assert (info.value.code, info.value.field) == (code, field)
    if code in ImageGenerator.solutions:
        assert info.value.solution == ImageGenerator.solutions[code]
    assert host.packs.list() == []


def test_unknown_pack(host: Host) -> None:
    for bad in (str(uuid.uuid4()), "nope"):
        with pytest.raises(ImageNodesError) as info:
            host.packs.get(bad)
        assert info.value.code == "UNKNOWN_INFERENCE_PACK"
        assert info.value.field == "inferencePackId"


def test_packs_cli(tmp_path: Path) -> None:
    images = json.dumps({"images": [{"prompt": "a cat", "steps": 2}]})
    code, pack = cli(tmp_path, "packs", "create", "--images", images, "--name", "cats")
    assert code == 0 and pack["images"] == [{"prompt": "a cat", "steps": 2}]
    assert cli(tmp_path, "packs", "list")[1] == [{"id": pack["id"], "name": "cats", "images": 1}]
    assert cli(tmp_path, "packs", "show", pack["id"])[1]["id"] == pack["id"]
    assert cli(tmp_path, "packs", "create", "--images", '[{"prompt": ""}]')[0] == 2


def test_image_generator_reports_unknown_pack_and_training_before_generating(
    host: Host,
) -> None:
    with pytest.raises(ImageNodesError) as info:
        host.run("image_generator", {"inferencePackId": str(uuid.uuid4())})
    assert info.value.code == "UNKNOWN_INFERENCE_PACK"
    with pytest.raises(ImageNodesError) as info:
        host.run(
            "image_generator",
            {"images": [{"prompt": "x"}, {"prompt": "y", "trainingId": str(uuid.uuid4())}]},
        )
    assert (info.value.code, info.value.field) == ("UNKNOWN_TRAINING", "images.1.trainingId")
    with pytest.raises(ImageNodesError) as info:
        host.run("image_generator", {"trainingId": str(uuid.uuid4()), "images": [{"prompt": "x"}]})
    assert (info.value.code, info.value.field) == ("UNKNOWN_TRAINING", "trainingId")
    assert not (Path(host.workspace.root) / "runs").exists()


# -- sessions --------------------------------------------------------------------------
def test_sessions_create_append_and_list(host: Host) -> None:
    session = host.sessions.create("session-2025-12-11-001", name="mountains")
    assert session["id"] == "session-2025-12-11-001"
    for i in range(3):
        host.sessions.append(session["id"], {"prompt": f"p{i}", "seed": i})
    history = host.sessions.history(session["id"])
    assert [e["prompt"] for e in history] == ["p0", "p1", "p2"]  # oldest first
    assert [e["seed"] for e in host.sessions.history(session["id"], limit=2)] == [1, 2]
    assert host.sessions.create()["id"].startswith("session-")
    assert len(host.sessions.list()) == 2
    with pytest.raises(InputError, match="already exists"):
        host.sessions.create("session-2025-12-11-001")


@pytest.mark.parametrize("bad", ["never-created", "../escape", "", "a/b"])
def test_unknown_or_invalid_session_is_invalid_session(host: Host, bad: str) -> None:
    with pytest.raises(ImageNodesError) as info:
        host.sessions.history(bad)
    assert info.value.code == "INVALID_SESSION" and info.value.field == "sessionId"
    assert info.value.solution


def test_sessions_cli(tmp_path: Path) -> None:
    code, session = cli(tmp_path, "sessions", "create", "s1", "--name", "first")
    assert code == 0 and session["id"] == "s1"
    assert cli(tmp_path, "sessions", "history", "s1")[1] == []
    assert cli(tmp_path, "sessions", "history", "nope")[0] == 2
