"""Bad requests to the gateway (gRPC and HTTP) are refused with INVALID_ARGUMENT / HTTP 400 naming the field,
never INTERNAL/UNKNOWN/500 or a dropped stream, and a bad photo fails SubmitJob itself with the preprocess
stage's google.rpc details (issue 17, findings 5, 6, 7 and 12)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from test_gateway import Stack, photo, upload

from synchuman.v1 import common_pb2
from synchuman.v1.reconstruction_pb2 import (
    CancelJobRequest,
    DeleteJobRequest,
    GetArtifactRequest,
    GetJobRequest,
    ListJobsRequest,
    WatchJobRequest,
)

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (RGB, 8 bit), with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    path = SHARED_IMAGES / "photo_truncated.jpeg"
    if path.exists():
        return path.read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:-4000]


#: photo -> the ErrorInfo reason SubmitJob must give (the preprocess stage's code)
BAD_PHOTOS = {
    "bomb_60000": (png_header_only(60000, 60000), "TOO_MANY_PIXELS"),
    "bomb_20000": (png_header_only(20000, 20000), "TOO_MANY_PIXELS"),
    "truncated": (truncated_jpeg(), "TRUNCATED_IMAGE"),
    "undecodable": (b"GIF89a" + b"\x00" * 200, None),
    "not_an_image": (b"hello, not a photo", "NOT_AN_IMAGE"),
    "animated": (animated_gif(), "ANIMATED_IMAGE"),
    "tiny": (png_header_only(4, 4), None),
}


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path, http_address="127.0.0.1:0", max_upload_bytes=200_000)
    yield stack
    stack.close()


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as client:
        yield client


def details_of(error: grpc.RpcError) -> list:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    found = []
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found


def assert_invalid(call, field: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert " object at 0x" not in error.details()
    fields = [
        v.field
        for d in details_of(error)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    assert field in fields, fields
    return error


def test_watch_cursor_out_of_the_store_range_is_invalid_argument(stack):
    job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
    for cursor in (2**63, 2**64 - 1):
        error = assert_invalid(
            lambda cursor=cursor: list(
                stack.stub.WatchJob(WatchJobRequest(job_id=job.id, after_sequence=cursor), timeout=10)
            ),
            "after_sequence",
        )
        assert str(2**63 - 1) in error.details()
    largest = list(
        stack.stub.WatchJob(WatchJobRequest(job_id=job.id, after_sequence=2**63 - 1), timeout=30)
    )
    assert largest == []  # in range: nothing after it, the stream ends with the job


def test_unknown_state_bad_ids_names_and_page_tokens_are_invalid_argument(stack):
    assert_invalid(lambda: stack.stub.ListJobs(ListJobsRequest(state=77), timeout=10), "state")
    for job_id in ("", "x" * 65, "a/b", "ü", "id\n"):
        assert_invalid(
            lambda job_id=job_id: stack.stub.GetJob(GetJobRequest(job_id=job_id), timeout=10), "job_id"
        )
        assert_invalid(
            lambda job_id=job_id: stack.stub.CancelJob(CancelJobRequest(job_id=job_id), timeout=10),
            "job_id",
        )
        assert_invalid(
            lambda job_id=job_id: stack.stub.DeleteJob(DeleteJobRequest(job_id=job_id), timeout=10),
            "job_id",
        )
    job = stack.stub.SubmitJob(upload(photo()), timeout=30).job
    for name in ("", "n" * 129):
        request = GetArtifactRequest(job_id=job.id, name=name)
        assert_invalid(lambda request=request: list(stack.stub.GetArtifact(request, timeout=10)), "name")
    token = f"{2**64:x}.{job.id}"
    assert_invalid(lambda: stack.stub.ListJobs(ListJobsRequest(page_token=token), timeout=10), "page_token")
    assert_invalid(
        lambda: stack.stub.ListJobs(ListJobsRequest(page_size=2**32 - 1), timeout=10), "page_size"
    )
    with pytest.raises(grpc.RpcError) as missing:
        stack.stub.GetJob(GetJobRequest(job_id="unknown-id"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("kind", sorted(BAD_PHOTOS))
def test_bad_photo_fails_submit_with_the_preprocess_details_and_stores_nothing(stack, http, kind):
    data, reason = BAD_PHOTOS[kind]
    error = assert_invalid(lambda: stack.stub.SubmitJob(upload(data), timeout=30), "image")
    infos = [d for d in details_of(error) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1 and infos[0].reason, infos
    if reason:
        assert infos[0].reason == reason
    assert "<" not in error.details() and "object at" not in error.details()
    reply = http.post("/v1/jobs", content=data, headers={"Content-Type": "image/png"})
    assert reply.status_code == 400, reply.text
    body = reply.json()["error"]
    assert body["code"] == "INVALID_ARGUMENT" and body["message"] == error.details()
    assert {"@type": "google.rpc.ErrorInfo"}.items() <= next(
        d for d in body["details"] if d["@type"] == "google.rpc.ErrorInfo"
    ).items()
    assert stack.stub.ListJobs(ListJobsRequest(), timeout=10).jobs == []


def test_oversized_photo_fails_submit(stack, http):
    big = np.random.default_rng(1).integers(0, 255, (400, 400, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) > 200_000
    assert_invalid(lambda: stack.stub.SubmitJob(upload(data), timeout=30), "start.image")
    assert http.post("/v1/jobs", content=data, headers={"Content-Type": "image/png"}).status_code == 413


def test_http_event_cursor_is_checked_before_the_stream_starts(stack, http):
    job_id = http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"}).json()["job"]["id"]
    for params, headers in (
        ({"after": str(10**20)}, {}),
        ({"after": "-1"}, {}),
        ({}, {"Last-Event-ID": "99999999999999999999999"}),
        ({}, {"Last-Event-ID": "²".encode()}),
        ({}, {"Last-Event-ID": "-3"}),
    ):
        reply = http.get(f"/v1/jobs/{job_id}/events", params=params, headers=headers)
        assert reply.status_code == 400, (params, headers, reply.status_code, reply.text[:200])
        error = reply.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["details"][0]["@type"] == "google.rpc.BadRequest"
    assert http.get("/v1/jobs", params={"state": "77"}).status_code == 400
    assert http.get("/v1/jobs", params={"page_size": str(10**20)}).status_code == 400
    assert http.get("/v1/jobs/" + "x" * 65).status_code == 400


def test_http_allow_header_lists_every_method_of_a_path(http):
    options = http.options("/v1/jobs")
    assert options.status_code == 204
    assert {m.strip() for m in options.headers["allow"].split(",")} >= {"GET", "POST"}
    patch = http.patch("/v1/jobs")
    assert patch.status_code == 405 and {"GET", "POST"} <= {
        m.strip() for m in patch.headers["allow"].split(",")
    }
    job_methods = {m.strip() for m in http.options("/v1/jobs/abc").headers["allow"].split(",")}
    assert {"GET", "DELETE"} <= job_methods


def test_openapi_declares_the_error_responses_and_types_the_options(http):
    spec = http.get("/openapi.json").json()
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert {"400", "413", "429"} <= set(submit["responses"])
    assert "409" in spec["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]
    assert "404" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    form = submit["requestBody"]["content"]["multipart/form-data"]
    options = form["schema"]["properties"]["options"]
    assert options["type"] == "object" and form["encoding"]["options"]["contentType"] == "application/json"
    steps = options["properties"]["multiview"]["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 200)


def test_float_options_at_the_range_edge_are_accepted(http):
    import json

    options = {
        "reconstruction": {"simplify_ratio": 0.99, "guidance_scale": 20.0},
        "multiview": {"guidance_scale": 1.0},
    }
    reply = http.post(
        "/v1/jobs", files={"image": ("p.png", photo(), "image/png")}, data={"options": json.dumps(options)}
    )
    assert reply.status_code == 201, reply.text


def test_a_reused_idempotency_key_does_not_replay_a_bad_request(stack):
    first = stack.stub.SubmitJob(upload(photo(), key="order-1"), timeout=30)
    options = common_pb2.JobOptions()
    options.multiview.steps = 0
    assert_invalid(
        lambda: stack.stub.SubmitJob(upload(photo(), key="order-1", options=options), timeout=30),
        "options.multiview.steps",
    )
    assert_invalid(lambda: stack.stub.SubmitJob(upload(b"not a photo", key="order-1"), timeout=30), "image")
    again = stack.stub.SubmitJob(upload(photo(), key="order-1"), timeout=30)
    assert again.deduplicated and again.job.id == first.job.id


@pytest.mark.parametrize("name", ["../../etc/passwd", "u2netp\n", "x" * 65, "rembg:", "-leading-dash"])
def test_a_malformed_segmenter_name_fails_submit(stack, name):
    options = common_pb2.JobOptions()
    options.preprocess.segmenter = name
    error = assert_invalid(
        lambda: stack.stub.SubmitJob(upload(photo(), options=options), timeout=30),
        "options.preprocess.segmenter",
    )
    assert "u2netp" in error.details()
    assert stack.stub.ListJobs(ListJobsRequest(), timeout=10).jobs == []
