"""S3 workspaces against a real (moto) S3 server on 127.0.0.1."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from PIL import Image

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from moto.server import ThreadedMotoServer  # noqa: E402

from imagenodes.errors import SourceImageError  # noqa: E402
from imagenodes.workspace import (  # noqa: E402
    Workspace,
    encode_png,
    load_image,
    read_imagenodes_metadata,
)

CREDS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def s3_client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"ws-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def _workspace(endpoint: str, url: str) -> Workspace:
    # skip_instance_cache: each test gets a fresh s3fs (no stale listing cache).
    return Workspace(
        url, client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True, **CREDS
    )


def _keys(s3_client, bucket: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def _png(color: tuple[int, int, int]) -> bytes:
    return encode_png(Image.new("RGB", (16, 8), color), {"prompt": "s3 test", "seed": 7})


def test_staging_commit_and_load_by_reference(endpoint, bucket, s3_client):
    ws = _workspace(endpoint, f"s3://{bucket}/prefix/")
    assert ws.url == f"s3://{bucket}/prefix"
    st = ws.stage("runs/r1")
    img0 = st.add("image-0.png", _png((255, 0, 0)))
    img1 = st.add("image-1.png", _png((0, 255, 0)))
    st.add("run.json", b'{"status": "succeeded"}', kind="manifest")
    assert _keys(s3_client, bucket) == []  # buffered only
    assert img0 == f"s3://{bucket}/prefix/runs/r1/image-0.png"
    st.commit()
    assert _keys(s3_client, bucket) == [
        "prefix/runs/r1/image-0.png",
        "prefix/runs/r1/image-1.png",
        "prefix/runs/r1/run.json",
    ]
    assert ws.read_json("runs/r1/run.json") == {"status": "succeeded"}
    assert read_imagenodes_metadata(ws.read_bytes(img0)) == {"prompt": "s3 test", "seed": 7}
    assert ws.ls("runs/r1") == ["runs/r1/image-0.png", "runs/r1/image-1.png", "runs/r1/run.json"]

    image = load_image(img1, ws, field="source_image")
    assert image.mode == "RGB" and image.size == (16, 8)
    assert image.getpixel((2, 2)) == (0, 255, 0)
    assert load_image("runs/r1/image-0.png", ws).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(f"s3a://{bucket}/prefix/runs/r1/image-0.png", ws).size == (16, 8)


def test_failure_mid_commit_leaves_nothing(endpoint, bucket, s3_client, monkeypatch):
    ws = _workspace(endpoint, f"s3://{bucket}/prefix")
    calls: list[str] = []
    real = ws.fs.pipe_file

    def flaky(path: str, value: bytes, **kwargs) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("simulated S3 outage")
        real(path, value, **kwargs)

    monkeypatch.setattr(ws.fs, "pipe_file", flaky)
    st = ws.stage("runs/r2")
    st.add("image-0.png", _png((1, 2, 3)))
    st.add("image-1.png", _png((4, 5, 6)))
    st.add("run.json", b"{}", kind="manifest")
    with pytest.raises(OSError, match="simulated"):
        st.commit()
    assert _keys(s3_client, bucket) == []


def test_discard_and_exception_write_nothing(endpoint, bucket, s3_client):
    ws = _workspace(endpoint, f"s3://{bucket}/p")
    with pytest.raises(RuntimeError), ws.stage("runs/r3") as st:
        st.add("image-0.png", _png((9, 9, 9)))
        raise RuntimeError("cancelled")
    with ws.stage("runs/r4") as st:
        st.add("image-0.png", _png((9, 9, 9)))
    assert _keys(s3_client, bucket) == []


@pytest.mark.parametrize(
    "bad",
    [
        "s3://{other}/prefix/runs/x.png",
        "s3://{bucket}/prefix-other/x.png",
        "s3://{bucket}/x.png",
        "s3://{bucket}/prefix/../x.png",
        "../x.png",
        "file:///etc/passwd",
        "/{bucket}/prefix/x.png",
    ],
)
def test_refs_outside_prefix_are_refused(endpoint, bucket, s3_client, bad):
    other = f"ws-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=other)
    s3_client.put_object(Bucket=other, Key="prefix/runs/x.png", Body=_png((0, 0, 0)))
    s3_client.put_object(Bucket=bucket, Key="x.png", Body=_png((0, 0, 0)))
    ws = _workspace(endpoint, f"s3://{bucket}/prefix")
    with pytest.raises(SourceImageError) as err:
        load_image(bad.format(bucket=bucket, other=other), ws, field="source_image")
    assert err.value.field == "source_image"


def test_missing_object_and_missing_bucket(endpoint, bucket, s3_client):
    ws = _workspace(endpoint, f"s3://{bucket}/prefix")
    with pytest.raises(SourceImageError) as err:
        load_image(f"s3://{bucket}/prefix/runs/none.png", ws)
    assert "does not exist" in err.value.message
    # Writing into a bucket that does not exist must fail, not create the bucket.
    ghost = f"ghost-{uuid.uuid4().hex[:12]}"
    ghost_ws = _workspace(endpoint, f"s3://{ghost}/prefix")
    with pytest.raises(OSError):
        ghost_ws.write_bytes("a.bin", b"x")
    names = {b["Name"] for b in s3_client.list_buckets()["Buckets"]}
    assert ghost not in names


def test_jpeg_read_back_through_s3(endpoint, bucket):
    ws = _workspace(endpoint, f"s3://{bucket}/prefix")
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (0, 0, 255)).save(buf, format="JPEG")
    ref = ws.write_bytes("inputs/photo.jpg", buf.getvalue())
    assert load_image(ref, ws).size == (10, 10)
