"""HTTP downloads of job files (issue 24, "HTTP = gRPC"): streamed from the artifact store, resumable with
``Range`` / ``If-Range``, ``ETag`` = the SHA-256 the job records (``If-None-Match``: 304), a clear 4xx for
every malformed or unsatisfiable range, a 307 to a presigned URL with an S3 store that gives them (moto's
S3 server, tests/real_servers.py), and a 50 MB download that leaves a real gateway process's resident
memory flat.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import gateway_doubles
import httpx
import pytest
from conftest import REPO_ROOT
from gateway_doubles import Behaviour, start_doubles
from real_servers import s3_bucket
from test_artifact_store import corrupt
from test_gateway import Stack, _sse, download, photo, stub_for, upload, wait_until, watch_all

import gateway.http as gateway_http
from gateway.main import add_arguments, config_from_args
from services.common.arguments import CommandLineError
from services.launcher import free_port
from services.supervisor import health_status
from synchuman.v1 import reconstruction_pb2

BUCKET = "synchuman-downloads"
#: Size of the large download, and how much the gateway's resident memory may grow while sending it.
LARGE_BYTES, MAX_GROWTH_BYTES = 50 << 20, 25 << 20


def finished_job(stack: Stack) -> str:
    """The id of a job run to success on ``stack``."""
    job_id = stack.stub.SubmitJob(upload(photo()), timeout=30).job.id
    assert watch_all(stack.stub, job_id)[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    return job_id


@pytest.fixture
def served(tmp_path):
    """(HTTP client, job id, the job's person.glb) of an in-process gateway on a folder store."""
    stack = Stack(tmp_path, http_address="127.0.0.1:0")
    job_id = finished_job(stack)
    _, glb = download(stack.stub, job_id, "person.glb")
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
        yield http, job_id, glb, stack
    stack.close()


def test_a_download_is_whole_or_the_range_asked(served):
    http, job_id, glb, _ = served
    url, size, etag = (
        f"/v1/jobs/{job_id}/artifacts/person.glb",
        len(glb),
        f'"{hashlib.sha256(glb).hexdigest()}"',
    )
    whole = http.get(url)
    assert whole.status_code == 200 and whole.content == glb
    assert whole.headers["etag"] == etag and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(size) and "content-range" not in whole.headers
    for asked, start, stop in (
        ("bytes=0-9", 0, 10),
        ("bytes=10-", 10, size),
        ("bytes=-5", size - 5, size),
        (f"bytes=-{size + 100}", 0, size),
        ("bytes=3-99999999", 3, size),
        (f"bytes={size - 1}-{size - 1}", size - 1, size),
    ):
        part = http.get(url, headers={"Range": asked})
        assert part.status_code == 206 and part.content == glb[start:stop], asked
        assert part.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}", asked
        assert part.headers["content-length"] == str(stop - start) and part.headers["etag"] == etag


def test_a_broken_download_resumes_where_it_stopped(served):
    http, job_id, glb, _ = served
    url, received = f"/v1/jobs/{job_id}/artifacts/person.glb", bytearray()
    with http.stream("GET", url) as first:
        etag = first.headers["etag"]
        received += next(first.iter_raw(len(glb) // 3))  # the connection breaks here
    rest = http.get(url, headers={"Range": f"bytes={len(received)}-", "If-Range": etag})
    assert rest.status_code == 206
    assert f'"{hashlib.sha256(received + rest.content).hexdigest()}"' == etag
    changed = http.get(url, headers={"Range": f"bytes={len(received)}-", "If-Range": '"an older file"'})
    assert changed.status_code == 200 and changed.content == glb  # If-Range other than the ETag: all of it


def test_an_unchanged_file_is_not_sent_again(served):
    http, job_id, glb, _ = served
    url, etag = f"/v1/jobs/{job_id}/artifacts/person.glb", f'"{hashlib.sha256(glb).hexdigest()}"'
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        unchanged = http.get(url, headers={"If-None-Match": if_none_match, "Range": "bytes=0-1"})
        assert unchanged.status_code == 304 and unchanged.content == b"", if_none_match
        assert unchanged.headers["etag"] == etag
    assert http.get(url, headers={"If-None-Match": '"other"'}).content == glb


@pytest.mark.parametrize(
    "asked",
    ["bytes=5-3", "bytes=0-1,4-5", "items=0-1", "bytes=-", "bytes=a-b", "bytes 0-1", f"bytes={'9' * 19}-"],
)
def test_a_malformed_range_is_a_400_naming_the_forms(served, asked):
    http, job_id, _, _ = served
    answer = http.get(f"/v1/jobs/{job_id}/artifacts/person.glb", headers={"Range": asked})
    assert answer.status_code == 400, (asked, answer.text)
    error = answer.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "bytes=FIRST-LAST" in error["message"]
    assert error["details"][0]["field_violations"][0]["field"] == "Range"


def test_a_range_outside_the_file_is_a_416_with_its_size(served):
    http, job_id, glb, _ = served
    for asked in (f"bytes={len(glb)}-", f"bytes={len(glb) + 5}-{len(glb) + 9}", "bytes=-0"):
        answer = http.get(f"/v1/jobs/{job_id}/artifacts/person.glb", headers={"Range": asked})
        assert answer.status_code == 416 and answer.headers["content-range"] == f"bytes */{len(glb)}"
        assert answer.json()["error"]["code"] == "OUT_OF_RANGE" and str(len(glb)) in answer.text


def test_missing_files_and_jobs_are_404(served):
    http, job_id, _, _ = served
    for url in (f"/v1/jobs/{job_id}/artifacts/mesh_obj.zip", "/v1/jobs/nojob/artifacts/person.glb"):
        answer = http.get(url, headers={"Range": "bytes=0-1"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "NOT_FOUND"


def test_a_damaged_file_is_never_delivered_whole(served):
    http, job_id, glb, stack = served
    corrupt(stack.gateway.manager.artifacts, job_id, "person.glb", glb[:-1] + b"!")
    with pytest.raises(httpx.RemoteProtocolError):  # short of its Content-Length
        http.get(f"/v1/jobs/{job_id}/artifacts/person.glb")


def test_the_openapi_document_lists_the_download_answers(served):
    http, *_ = served
    answers = http.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/artifacts/{name}"]["get"]
    assert {"200", "206", "304", "307", "404", "416"} <= set(answers["responses"])
    assert "Content-Range" in answers["responses"]["416"]["headers"]
    assert {"Range", "If-None-Match", "If-Range"} <= {p["name"].title() for p in answers["parameters"]}


# -- presigned S3 downloads ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server, reached the production way: the usual AWS variables."""
    with s3_bucket(BUCKET) as endpoint:
        yield endpoint


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_presigned_downloads_redirect_to_s3_with_the_same_bytes(s3_endpoint, tmp_path):
    store = config_from_args(parsed("--artifact-store", f"s3://{BUCKET}/g", "--s3-presigned-downloads", "60"))
    token = {"Authorization": "Bearer secret"}
    stack = Stack(
        tmp_path, http_address="127.0.0.1:0", artifact_store=store.artifact_store, auth_token="secret"
    )
    base = f"http://127.0.0.1:{stack.gateway.http_port}"
    try:
        with httpx.Client(base_url=base, timeout=30, headers=token) as http:
            job_id = http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"}).json()[
                "job"
            ]["id"]
            assert _sse(http.get(f"/v1/jobs/{job_id}/events"))[-1]["event"] == "finished"
            glb = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"g/{job_id}/person.glb")["Body"].read()
            url = f"/v1/jobs/{job_id}/artifacts/person.glb"
            redirect = http.get(url)
            assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_endpoint)
            assert redirect.headers["etag"] == f'"{hashlib.sha256(glb).hexdigest()}"'
            followed = http.get(url, follow_redirects=True)  # the token stays with the gateway
            assert followed.status_code == 200 and followed.content == glb
            assert followed.headers["content-disposition"] == f'attachment; filename="{job_id}-person.glb"'
            part = http.get(url, headers={"Range": "bytes=4-11"}, follow_redirects=True)
            assert part.status_code == 206 and part.content == glb[4:12]
            etag = redirect.headers["etag"]
            assert http.get(url, headers={"If-None-Match": etag}).status_code == 304  # no redirect
            assert http.get(url, headers={"Range": f"bytes={len(glb)}-"}).status_code == 416
    finally:
        stack.close()


def test_presigned_downloads_need_an_s3_store_and_sane_seconds():
    assert config_from_args(parsed()).artifact_store == ""
    with pytest.raises(CommandLineError, match="--s3-presigned-downloads: .*need an s3://BUCKET/PREFIX"):
        config_from_args(parsed("--s3-presigned-downloads", "60"))
    with pytest.raises(CommandLineError, match="whole seconds from 0 to 604800"):
        config_from_args(parsed("--artifact-store", "s3://b/p", "--s3-presigned-downloads", "-1"))


# -- memory ----------------------------------------------------------------------------------------------


def status_bytes(pid: int, field: str) -> int:
    """``field`` (VmRSS, VmHWM) of /proc/PID/status in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.fixture
def large_job(tmp_path, monkeypatch):
    """(pid, HTTP base URL, job id, GLB) of a ``python -m gateway`` process whose job made a 50 MB GLB
    (stage doubles in this process)."""
    large = os.urandom(LARGE_BYTES)
    monkeypatch.setattr(gateway_doubles, "glb", lambda: large)
    server, port, _ = start_doubles("127.0.0.1:0", ["preprocess", "stage1", "stage2"], Behaviour())
    target, address, http_port = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}", free_port()
    argv = [
        sys.executable, "-m", "gateway", "--log-level", "WARNING", "--address", address,
        "--http", f"127.0.0.1:{http_port}", "--data-dir", str(tmp_path / "data"),
        "--preprocess", target, "--stage1", target, "--stage2", target,
    ]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(os.environ, MALLOC_ARENA_MAX="2"))
    try:
        wait_until(
            lambda: health_status(address, "synchuman.v1.ReconstructionService") == 1, 60, "the gateway"
        )
        stub = stub_for(address)
        job_id = stub.SubmitJob(upload(photo()), timeout=30).job.id
        assert watch_all(stub, job_id, 120)[-1].finished.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
        yield process.pid, f"http://127.0.0.1:{http_port}", job_id, large
    finally:
        process.terminate()
        process.wait(30)
        server.stop(grace=None)


def test_a_50_mb_download_leaves_the_gateway_memory_flat(large_job):
    pid, base, job_id, large = large_job
    before = status_bytes(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    samples, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(status_bytes(pid, "VmRSS"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    digest, received = hashlib.sha256(), 0
    try:
        with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/artifacts/person.glb", timeout=60) as answer:
            assert answer.status_code == 200 and answer.headers["content-length"] == str(LARGE_BYTES)
            for piece in answer.iter_raw(1 << 20):
                digest.update(piece)
                received += len(piece)
    finally:
        done.set()
        sampler.join()
    after = status_bytes(pid, "VmRSS")
    peak = max(status_bytes(pid, "VmHWM"), *samples)
    assert received == LARGE_BYTES and digest.digest() == hashlib.sha256(large).digest()
    mib = 1 << 20
    print(f"gateway RSS {before / mib:.1f} MiB before, {after / mib:.1f} after, peak {peak / mib:.1f}")
    assert peak - before < MAX_GROWTH_BYTES, f"RSS grew {(peak - before) / mib:.1f} MiB sending 50 MiB"


# -- event stream -----------------------------------------------------------------------------------------


def test_the_event_stream_is_the_watch_with_keep_alives(tmp_path, monkeypatch):
    """The SSE stream carries what gRPC WatchJob does, comments while the job is quiet, and ends its watch
    (``is_active`` False, no more events pulled) when the client goes."""
    monkeypatch.setattr(gateway_http, "KEEP_ALIVE_S", 0.2)
    stack = Stack(tmp_path, http_address="127.0.0.1:0", behaviours={"stage2": Behaviour(steps=6, step_s=0.3)})
    manager, pulled, actives = stack.gateway.manager, [], []
    watch = manager.watch

    def watched(job_id, after, is_active):
        actives.append(is_active)
        for event in watch(job_id, after, is_active):
            pulled.append(event.sequence)
            yield event

    monkeypatch.setattr(manager, "watch", watched)
    submit = {"content": photo(), "headers": {"Content-Type": "image/png"}}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
            job_id = http.post("/v1/jobs", **submit).json()["job"]["id"]
            with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                lines = list(stream.iter_lines())
            assert ": keep-alive" in lines
            sent = [int(line.removeprefix("id: ")) for line in lines if line.startswith("id: ")]
            assert sent == [event.sequence for event in watch_all(stack.stub, job_id)]
            second = http.post("/v1/jobs", **submit).json()["job"]["id"]
            with http.stream("GET", f"/v1/jobs/{second}/events") as stream:
                next(stream.iter_lines())  # the client goes after the first event, long before the job ends
            wait_until(lambda: not actives[-1](), 5, "the watch to see the client gone")
            pulled.clear()
            wait_until(lambda: manager.get(second).state == reconstruction_pb2.JOB_STATE_SUCCEEDED, 30, "job")
            assert len(pulled) <= 1, f"the watch went on after the client had gone: {pulled}"
    finally:
        stack.close()
