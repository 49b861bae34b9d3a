"""Tenants on a live gateway (test-double stages, real gRPC and HTTP): every job belongs to the API key that
created it, another key gets NOT_FOUND / 404 for it on every operation of both APIs (the matrix is printed:
``pytest -s``), admin keys and the shared token see every job, quotas refuse with RESOURCE_EXHAUSTED / 429,
``QuotaFailure``, ``RetryInfo`` and ``Retry-After``, a revoked key is UNAUTHENTICATED / 401, and a gateway
without keys behaves as before them."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import grpc
import httpx
import pytest
from gateway_doubles import Behaviour
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_gateway import Stack, photo, upload, wait_until

from services.common.auth import authorized_channel
from synchuman.v1 import reconstruction_pb2, reconstruction_pb2_grpc
from synchuman_cli.main import main as synchuman

SHARED = "shared-s3cret"
#: Each job spends about half a second in stage 1: long enough to be unfinished when a quota is checked.
SLOW_STAGE1 = Behaviour(step_s=0.05, steps=10)
FINISHED = {"JOB_STATE_SUCCEEDED", reconstruction_pb2.JOB_STATE_SUCCEEDED}


def create_key(stack: Stack, *args: str) -> str:
    """``synchuman keys create ARGS`` on the stack's job store; the key it prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert synchuman(["keys", "--data-dir", str(stack.config.data_dir), "create", *args]) == 0
    return out.getvalue().strip()


class Caller:
    """One token on both APIs: ``grpc`` (a stub sending it) and ``http`` (a client sending it)."""

    def __init__(self, stack: Stack, token: str) -> None:
        self.token = token
        self._channel = grpc.insecure_channel(stack.gateway.address)
        channel = authorized_channel(self._channel, token) if token else self._channel
        self.grpc = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.gateway.http_port}", headers=headers, timeout=30
        )

    def submit_grpc(self, key: str = "") -> str:
        return self.grpc.SubmitJob(upload(photo(), key=key), timeout=30).job.id

    def submit_http(self) -> str:
        reply = self.http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"})
        assert reply.status_code == 201, reply.text
        return reply.json()["job"]["id"]

    def close(self) -> None:
        self.http.close()
        self._channel.close()


def grpc_status(call: Callable[[], object]) -> str:
    """``OK`` or the gRPC code's name."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def grpc_ops(stub, job_id: str) -> dict[str, Callable[[], str]]:
    """The operations on one job over gRPC, each returning its status (``list``: listed / absent)."""
    get = reconstruction_pb2.GetJobRequest(job_id=job_id)
    photo_file = reconstruction_pb2.GetArtifactRequest(job_id=job_id, name="input")

    def listed() -> bool:
        return job_id in [j.id for j in stub.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10).jobs]

    return {
        "get": lambda: grpc_status(lambda: stub.GetJob(get, timeout=10)),
        "watch": lambda: grpc_status(
            lambda: list(stub.WatchJob(reconstruction_pb2.WatchJobRequest(job_id=job_id), timeout=10))
        ),
        "download": lambda: grpc_status(
            lambda: list(stub.GetArtifact(photo_file, timeout=10))
        ),
        "list": lambda: "listed" if listed() else "absent",
        "cancel": lambda: grpc_status(
            lambda: stub.CancelJob(reconstruction_pb2.CancelJobRequest(job_id=job_id), timeout=10)
        ),
        "delete": lambda: grpc_status(
            lambda: stub.DeleteJob(reconstruction_pb2.DeleteJobRequest(job_id=job_id), timeout=10)
        ),
    }


def http_ops(http: httpx.Client, job_id: str) -> dict[str, Callable[[], str]]:
    """The operations on one job over HTTP, each returning its status code (``list``: listed / absent)."""
    def code(response: httpx.Response) -> str:
        return str(response.status_code)

    def listed() -> bool:
        return job_id in [j["id"] for j in http.get("/v1/jobs").json()["jobs"]]

    return {
        "get": lambda: code(http.get(f"/v1/jobs/{job_id}")),
        "watch": lambda: code(http.get(f"/v1/jobs/{job_id}/events")),
        "download": lambda: code(http.get(f"/v1/jobs/{job_id}/artifacts/input")),
        "list": lambda: "listed" if listed() else "absent",
        "cancel": lambda: code(http.post(f"/v1/jobs/{job_id}/cancel")),
        "delete": lambda: code(http.delete(f"/v1/jobs/{job_id}")),
    }


OPERATIONS = ("get", "watch", "download", "list", "cancel", "delete")
CALLERS = ("other key", "owner key", "admin key", "shared token")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    made = Stack(
        tmp_path_factory.mktemp("tenants"),
        behaviours={"stage1": SLOW_STAGE1},
        http_address="127.0.0.1:0",
        auth_token=SHARED,
    )
    yield made
    made.close()


@pytest.fixture(scope="module")
def callers(stack):
    made = {
        "owner key": Caller(stack, create_key(stack, "--name", "tenant a")),
        "other key": Caller(stack, create_key(stack, "--name", "tenant b")),
        "admin key": Caller(stack, create_key(stack, "--name", "ops", "--admin")),
        "shared token": Caller(stack, SHARED),
    }
    yield made
    for caller in made.values():
        caller.close()


def _finished(caller: Caller, job_ids: list[str]) -> None:
    for job_id in job_ids:
        wait_until(
            lambda job_id=job_id: caller.grpc.GetJob(
                reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10
            ).job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED,
            what=f"job {job_id} to succeed",
        )


def test_tenant_isolation_matrix_on_both_apis(callers):
    owner = callers["owner key"]
    # per API: the job every caller works on, and one job each for the admin key's and shared token's delete
    jobs = {
        "gRPC": [owner.submit_grpc() for _ in range(3)],
        "HTTP": [owner.submit_http() for _ in range(3)],
    }
    _finished(owner, [j for ids in jobs.values() for j in ids])
    seen: dict[tuple[str, str, str], str] = {}
    for api, (main, for_admin, for_shared) in jobs.items():
        ops = {
            name: (grpc_ops(c.grpc, main) if api == "gRPC" else http_ops(c.http, main))
            for name, c in callers.items()
        }
        for operation in OPERATIONS[:-1]:
            for name in CALLERS:
                seen[operation, api, name] = ops[name][operation]()
        # delete: the other key first (the job stays), then admins on their own jobs, the owner last
        seen["delete", api, "other key"] = ops["other key"]["delete"]()
        for name, job_id in (("admin key", for_admin), ("shared token", for_shared)):
            caller = callers[name]
            delete = grpc_ops(caller.grpc, job_id) if api == "gRPC" else http_ops(caller.http, job_id)
            seen["delete", api, name] = delete["delete"]()
        seen["delete", api, "owner key"] = ops["owner key"]["delete"]()

    print("\ntenant isolation matrix: a finished job of the owner key, the status each caller gets")
    for api in jobs:
        print(f"{api:<10}" + "".join(f"{name:>14}" for name in CALLERS))
        for operation in OPERATIONS:
            print(f"{operation:<10}" + "".join(f"{seen[operation, api, name]:>14}" for name in CALLERS))

    expected = {"gRPC": ("NOT_FOUND", "OK"), "HTTP": ("404", "200")}
    for (operation, api, name), status in seen.items():
        refused, allowed = expected[api]
        if operation == "list":
            want = "absent" if name == "other key" else "listed"
        else:
            want = refused if name == "other key" else allowed
        assert status == want, (operation, api, name, status)


def test_another_keys_job_answers_exactly_as_an_unknown_one(callers):
    owner, other = callers["owner key"], callers["other key"]
    job_id = owner.submit_grpc()
    unknown = "x" * len(job_id)
    with pytest.raises(grpc.RpcError) as foreign:
        other.grpc.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10)
    with pytest.raises(grpc.RpcError) as missing:
        other.grpc.GetJob(reconstruction_pb2.GetJobRequest(job_id=unknown), timeout=10)
    assert foreign.value.details() == missing.value.details().replace(unknown, job_id)
    # a running job: another key can neither cancel it nor see it in its list; it still succeeds
    assert grpc_ops(other.grpc, job_id)["cancel"]() == "NOT_FOUND"
    assert http_ops(other.http, job_id)["cancel"]() == "404"
    _finished(owner, [job_id])
    # idempotency keys are per key: the same key from another tenant makes another job
    first = owner.submit_grpc(key="order-7")
    assert other.submit_grpc(key="order-7") != first and owner.submit_grpc(key="order-7") == first


def test_admin_key_and_shared_token_list_every_tenants_job(callers):
    a, b = callers["owner key"], callers["other key"]
    of_a, of_b = a.submit_grpc(), b.submit_http()
    request = reconstruction_pb2.ListJobsRequest(page_size=1000)
    for name in ("admin key", "shared token"):
        assert {of_a, of_b} <= {j.id for j in callers[name].grpc.ListJobs(request, timeout=10).jobs}, name
    listed_by_a = {j["id"] for j in a.http.get("/v1/jobs", params={"page_size": 1000}).json()["jobs"]}
    assert of_a in listed_by_a and of_b not in listed_by_a
    _finished(callers["admin key"], [of_a, of_b])


def metric(caller: Caller, series: str) -> float:
    """The value of one series of the gateway's ``/metrics`` (0 when absent)."""
    for line in caller.http.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _quota_details(status) -> tuple[error_details_pb2.QuotaFailure | None, float]:
    failure, delay = None, 0.0
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToTimedelta().total_seconds()
    return failure, delay


def test_concurrent_and_daily_quotas_on_both_apis(stack):
    caller = Caller(stack, create_key(stack, "--name", "small", "--quota", "concurrent=1,daily=3"))
    try:
        first = caller.submit_grpc()  # half a second in stage 1: still unfinished below
        with pytest.raises(grpc.RpcError) as refused:
            caller.submit_grpc()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        failure, delay = _quota_details(rpc_status.from_call(refused.value))
        assert failure.violations[0].quota_metric == "max_concurrent_jobs" and delay == 30
        assert failure.violations[0].subject.startswith("api_key:") and failure.violations[0].quota_value == 1
        over = caller.http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"})
        assert over.status_code == 429 and over.headers["retry-after"] == "30"
        types = [d["@type"] for d in over.json()["error"]["details"]]
        assert "google.rpc.QuotaFailure" in types and "google.rpc.RetryInfo" in types
        assert metric(caller, 'synchuman_gateway_quota_refusals_total{metric="max_concurrent_jobs"}') >= 2
        _finished(caller, [first])
        caller.submit_http()  # the second of the day; the refused ones did not count
        _finished(caller, [j.id for j in caller.grpc.ListJobs(reconstruction_pb2.ListJobsRequest()).jobs])
        caller.submit_grpc()
        _finished(caller, [j.id for j in caller.grpc.ListJobs(reconstruction_pb2.ListJobsRequest()).jobs])
        daily = caller.http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"})
        assert daily.status_code == 429 and 1 <= int(daily.headers["retry-after"]) <= 86400
        violation = daily.json()["error"]["details"][0]["violations"][0]
        assert violation["quota_metric"] == "max_jobs_per_day" and "today" in violation["description"]
        with pytest.raises(grpc.RpcError) as again:
            caller.submit_grpc()
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _quota_details(rpc_status.from_call(again.value))[1] > 0
    finally:
        caller.close()


def test_upload_quota_refuses_a_larger_photo_without_retry_advice(stack):
    limit = f"upload={len(photo()) - 1}"
    caller = Caller(stack, create_key(stack, "--name", "tiny photos", "--quota", limit))
    try:
        with pytest.raises(grpc.RpcError) as refused:
            caller.submit_grpc()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        failure, delay = _quota_details(rpc_status.from_call(refused.value))
        assert failure.violations[0].quota_metric == "max_upload_bytes" and delay == 0  # waiting won't help
        over = caller.http.post("/v1/jobs", content=photo(), headers={"Content-Type": "image/png"})
        assert over.status_code == 429 and "retry-after" not in over.headers
        assert "smaller photo" in over.json()["error"]["message"]
    finally:
        caller.close()


def test_revoked_key_is_unauthenticated_on_both_apis(stack):
    caller = Caller(stack, create_key(stack, "--name", "leaving"))
    try:
        assert caller.http.get("/v1/jobs").status_code == 200
        assert caller.http.get("/v1/profiles").status_code == 200  # what the web page asks first
        key_id = caller.token.split("_")[1]
        with contextlib.redirect_stderr(io.StringIO()):
            assert synchuman(["keys", "--data-dir", str(stack.config.data_dir), "revoke", key_id]) == 0
        with pytest.raises(grpc.RpcError) as refused:
            caller.grpc.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in refused.value.details()
        assert metric(caller, 'synchuman_gateway_auth_refusals_total{reason="revoked_key"}') >= 1
        gone = caller.http.get("/v1/profiles")
        assert gone.status_code == 401 and gone.headers["www-authenticate"] == "Bearer"  # the page asks again
        forged = Caller(stack, caller.token[:-1] + ("A" if caller.token[-1] != "A" else "B"))
        try:
            assert forged.http.get("/v1/jobs").status_code == 401
        finally:
            forged.close()
    finally:
        caller.close()


def test_gateway_without_keys_behaves_as_before_until_a_key_exists(tmp_path):
    stack = Stack(tmp_path, http_address="127.0.0.1:0")  # no shared token, no keys: open
    anonymous, stale = Caller(stack, ""), Caller(stack, "some-old-token")
    try:
        job_id = anonymous.submit_grpc()
        assert stale.http.get(f"/v1/jobs/{job_id}").status_code == 200  # a token is ignored, as before
        key = Caller(stack, create_key(stack, "--name", "first tenant"))
        try:
            assert anonymous.http.get("/v1/jobs").status_code == 401  # keys exist: a token is needed
            with pytest.raises(grpc.RpcError) as refused:
                anonymous.grpc.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "no token" in refused.value.details()
            # the jobs from before the keys are the admin's
            assert key.http.get(f"/v1/jobs/{job_id}").status_code == 404
        finally:
            key.close()
    finally:
        anonymous.close()
        stale.close()
        stack.close()

