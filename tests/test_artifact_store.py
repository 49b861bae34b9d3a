"""The artifact stores (folder and S3) against the same contract: atomic writes, checksums stored and checked,
streamed reads, deletion. S3 is moto's server mode (tests/real_servers.py), started as its own process: it
emulates the S3 REST API over HTTP, so the store talks to it through boto3 exactly as to AWS or MinIO.
"""

from __future__ import annotations

import hashlib
import os
import time

import boto3
import grpc
import httpx
import pytest
from real_servers import s3_bucket

from gateway.artifacts import ArtifactCorrupted, open_artifact_store
from gateway.artifacts_s3 import presigned_downloads_url

BUCKET = "synchuman-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """The emulator's endpoint, handed to the store the production way: the usual AWS variables."""
    with s3_bucket(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_artifact_store(f"file://{tmp_path}/artifacts", tmp_path)
    request.getfixturevalue("s3_endpoint")
    return open_artifact_store(f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}", tmp_path)


def corrupt(store, job_id: str, name: str, data: bytes) -> None:
    """Overwrite the stored bytes behind the store's back (bit rot, a bad copy), keeping its checksum."""
    if hasattr(store, "root"):
        (store.root / job_id / name).write_bytes(data)
        return
    client = boto3.client("s3")
    key = f"{store.prefix}/{job_id}/{name}"
    kept = client.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    client.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata=kept)


def test_put_get_stream_and_delete(store):
    glb = os.urandom(20 * (1 << 20) + 123)  # bigger than one multipart part on S3
    header = store.put("job1", "person.glb", glb)
    assert header.size_bytes == len(glb) and header.sha256 == hashlib.sha256(glb).hexdigest()
    assert header.media_type == "model/gltf-binary"
    store.put("job1", "input", b"photo", "image/jpeg")
    store.put("job2", "input", b"other")
    assert store.has("job1", "person.glb") and not store.has("job1", "mesh_obj.zip")
    assert store.get("job1", "person.glb") == glb
    pieces = list(store.chunks("job1", "person.glb", chunk_bytes=1 << 20))
    assert max(len(p) for p in pieces) <= 1 << 20 and b"".join(pieces) == glb
    store.put("job1", "input", b"replaced")
    assert store.get("job1", "input") == b"replaced"

    assert store.remove_job("job1") == 2
    assert not store.has("job1", "person.glb") and store.remove_job("job1") == 0
    assert store.get("job2", "input") == b"other"
    with pytest.raises(FileNotFoundError):
        store.get("job1", "input")
    with pytest.raises(FileNotFoundError):
        store.chunks("job1", "input")


def test_checksums_are_checked_on_every_read(store):
    store.put("job1", "voxels.bin", b"\x01" * 5000)
    corrupt(store, "job1", "voxels.bin", b"\x02" * 5000)
    with pytest.raises(ArtifactCorrupted, match="job1/voxels.bin"):
        store.get("job1", "voxels.bin")
    with pytest.raises(ArtifactCorrupted):
        b"".join(store.chunks("job1", "voxels.bin", chunk_bytes=1000))


def test_bad_names_are_refused(store):
    for job_id, name in (("../x", "a"), ("job", "../etc"), ("job", ".hidden"), ("job", "a/b")):
        with pytest.raises(ValueError):
            store.put(job_id, name, b"x")


def test_missing_bucket_is_a_clear_error(s3_endpoint, tmp_path):
    with pytest.raises(ValueError, match="no-such-bucket.*not reachable"):
        open_artifact_store("s3://no-such-bucket/p", tmp_path)


def test_unknown_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        open_artifact_store("gs://bucket", tmp_path)


def test_gateway_on_s3_serves_deletes_and_expires_job_files(s3_endpoint, tmp_path):
    """A gateway with ``--artifact-store s3://...``: jobs run, downloads match, DeleteJob and the retention
    sweep remove the job's objects."""
    from test_gateway import Stack, download, photo, upload, watch_all

    from synchuman.v1.reconstruction_pb2 import JOB_STATE_SUCCEEDED, DeleteJobRequest

    client = boto3.client("s3")

    def objects(job_id: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"gateway/{job_id}/")
        return [item["Key"] for item in listed.get("Contents", [])]

    stack = Stack(tmp_path, artifact_store=f"s3://{BUCKET}/gateway", retention_s=3600.0)
    try:
        ids = [stack.stub.SubmitJob(upload(photo()), timeout=30).job.id for _ in range(2)]
        for job_id in ids:
            assert watch_all(stack.stub, job_id)[-1].finished.state == JOB_STATE_SUCCEEDED
        header, glb = download(stack.stub, ids[0], "person.glb")
        stored = objects(ids[0])
        assert f"gateway/{ids[0]}/person.glb" in stored and f"gateway/{ids[0]}/input" in stored
        meta = client.head_object(Bucket=BUCKET, Key=f"gateway/{ids[0]}/person.glb")["Metadata"]
        assert meta["sha256"] == header.sha256 == hashlib.sha256(glb).hexdigest()
        corrupt(stack.gateway.manager.artifacts, ids[0], "person.glb", glb[:-1] + b"!")
        with pytest.raises(grpc.RpcError) as damaged:
            download(stack.stub, ids[0], "person.glb")
        assert damaged.value.code() == grpc.StatusCode.DATA_LOSS and "person.glb" in damaged.value.details()
        deleted = stack.stub.DeleteJob(DeleteJobRequest(job_id=ids[0]), timeout=30).deleted_artifacts
        assert deleted == len(stored) and objects(ids[0]) == []
        assert objects(ids[1])
        assert stack.gateway.manager.delete_expired(now_s=time.time() + 7200) == 1
        assert objects(ids[1]) == []
    finally:
        stack.close()


def test_parts_are_read_without_the_rest(store):
    data = os.urandom(3 * 1000 + 17)
    store.put("job1", "part.bin", data)
    for start, stop in ((0, 1), (999, 2001), (3000, None), (5, len(data)), (len(data) - 1, None)):
        pieces = list(store.chunks("job1", "part.bin", chunk_bytes=1000, start=start, stop=stop))
        assert max(len(p) for p in pieces) <= 1000 and b"".join(pieces) == data[start:stop], (start, stop)
    for start, stop in ((-1, None), (10, 10), (10, 5)):
        with pytest.raises(ValueError, match="no part of a file"):
            store.chunks("job1", "part.bin", start=start, stop=stop)
    with pytest.raises(FileNotFoundError):
        store.chunks("job1", "missing.bin", start=1, stop=2)


def test_a_damaged_file_is_never_passed_on_whole(store):
    store.put("job1", "voxels.bin", b"\x01" * 5000)
    corrupt(store, "job1", "voxels.bin", b"\x02" * 5000)
    received = bytearray()
    with pytest.raises(ArtifactCorrupted):
        for piece in store.chunks("job1", "voxels.bin", chunk_bytes=1000):
            received += piece
    assert len(received) == 4000  # the last piece is held back until the check
    assert b"".join(store.chunks("job1", "voxels.bin", start=4000)) == b"\x02" * 1000  # parts: unchecked


def test_only_an_s3_store_with_presigned_downloads_gives_urls(s3_endpoint, tmp_path):
    folder = open_artifact_store(f"file://{tmp_path}/artifacts", tmp_path)
    plain = open_artifact_store(f"s3://{BUCKET}/plain", tmp_path)
    presigning = open_artifact_store(presigned_downloads_url(f"s3://{BUCKET}/signed", 60), tmp_path)
    assert presigning.presigned_downloads_s == 60 and presigning.prefix == "signed"
    for store in (folder, plain, presigning):
        store.put("job1", "person.glb", b"glTF" * 1000)
    assert folder.download_url("job1", "person.glb", "x.glb") == plain.download_url("job1", "person.glb", "x")
    assert folder.download_url("job1", "person.glb", "x.glb") == ""
    url = presigning.download_url("job1", "person.glb", "job1-person.glb")
    assert url.startswith(f"{s3_endpoint}/{BUCKET}/signed/job1/person.glb?")
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"glTF" * 1000
    assert answer.headers["content-disposition"] == 'attachment; filename="job1-person.glb"'


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"s3://{BUCKET}/p?presigned_downloads=-1", "whole seconds from 0 to 604800"),
        (f"s3://{BUCKET}/p?presigned_downloads=604801", "whole seconds"),
        (f"s3://{BUCKET}/p?expiry=5", "unknown artifact store option"),
    ],
)
def test_bad_s3_store_options_are_refused(tmp_path, url, message):
    with pytest.raises(ValueError, match=message):
        open_artifact_store(url, tmp_path)


def test_presigned_downloads_need_an_s3_store():
    with pytest.raises(ValueError, match="need an s3://BUCKET/PREFIX artifact store"):
        presigned_downloads_url("file:///data", 60)
    assert presigned_downloads_url("s3://b/p", 5) == "s3://b/p?presigned_downloads=5"
    with pytest.raises(ValueError, match="whole seconds"):
        presigned_downloads_url("s3://b/p", 10**7)
