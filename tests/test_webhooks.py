"""Webhooks (gateway.webhooks*): a job submitted with a callback URL has its end event POSTed to a real HTTP
receiver started here (a ``ThreadingHTTPServer`` on 127.0.0.1), signed per Standard Webhooks (verified with
the ``standardwebhooks`` library), retried on the back-off schedule, persisted in the job store so that a
gateway process killed between attempts (SQLite: restarted on the same store; PostgreSQL: a second gateway)
still delivers, and refused by the SSRF policy where it must be.

The stage services are the gRPC doubles of tests/gateway_doubles.py; the retry schedule's base is shrunk
(``--webhook-retry-base``) so the tests take seconds. The fault tests print their timelines (``-s``).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import REPO_ROOT
from gateway_doubles import Behaviour, start_doubles
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from real_servers import PostgresServer, create_database
from standardwebhooks import Webhook
from test_gateway import Stack, photo, stub_for, upload, wait_until
from tls_certs import CertificateAuthority

from gateway.server import Gateway, GatewayConfig
from gateway.store_sqlite import SqliteJobStore
from gateway.webhooks import WebhookDispatcher, WebhookRetry, WebhookSettings, check_secret, event_body
from gateway.webhooks_config import add_webhook_arguments, webhook_settings_from_args
from gateway.webhooks_policy import MAX_URL_CHARS, Target, WebhookPolicy, WebhookRefused, parse_allow_hosts
from gateway.webhooks_send import post
from services.common.arguments import CommandLineError
from services.launcher import free_port
from services.supervisor import health_status
from synchuman.v1 import reconstruction_pb2

_databases = itertools.count()
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
SERVICE = "synchuman.v1.ReconstructionService"


@dataclass
class Received:
    """One request the receiver got: ``at`` (time.time()), its path, headers, body and the status sent."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A real HTTP server on 127.0.0.1 whose POSTs are answered with ``statuses`` in turn (the last one
    repeats); a 3xx answer carries ``Location: <redirect_to>``. Keeps every request in :attr:`got`."""

    def __init__(self, statuses: list[int], redirect_to: str = "") -> None:
        self.statuses, self.redirect_to, self.got = list(statuses), redirect_to, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.got.append(Received(time.time(), self.path, headers, body, status))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", receiver.redirect_to)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"no")

            def log_message(self, *args: object) -> None:
                """Quiet."""

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/synchuman?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    receivers: list[Receiver] = []

    def make(statuses: list[int], redirect_to: str = "") -> Receiver:
        receivers.append(Receiver(statuses, redirect_to))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


def settings(base_s: float, allow_private: bool = True, hosts: tuple[str, ...] = ("127.0.0.1",)):
    return WebhookSettings(SECRET, WebhookPolicy(hosts, allow_private), WebhookRetry(base_s), 5.0, 4, 0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """An in-process gateway (gRPC and HTTP) with webhooks to 127.0.0.1 (private addresses allowed), retry
    base 0.2 s: attempts 0.2 s and 1.2 s after the first."""
    stack = Stack(tmp_path_factory.mktemp("webhooks"), http_address="127.0.0.1:0", webhooks=settings(0.2))
    yield stack
    stack.close()


def submit(stub, url: str) -> reconstruction_pb2.Job:
    requests = list(upload(photo()))
    requests[0].start.callback_url = url
    return stub.SubmitJob(iter(requests), timeout=30).job


def delivered_job(stub, job_id: str, attempts: int, timeout_s: float = 30.0) -> reconstruction_pb2.Job:
    """GetJob once the job's webhook has ``attempts`` attempts recorded."""
    found = {}

    def recorded() -> bool:
        found["job"] = stub.GetJob(reconstruction_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        return len(found["job"].webhook.attempts) >= attempts

    wait_until(recorded, timeout_s, f"{attempts} webhook attempts")
    return found["job"]


def timeline(title: str, job: reconstruction_pb2.Job, receiver: Receiver, marks: dict[str, float]) -> str:
    """The attempts as the receiver saw them and the gateway recorded them, seconds after the job's end."""
    end = job.end_time.ToNanoseconds() / 1e9
    lines = [f"{title} (t = seconds after the job ended, {job.id})"]
    events = [(r.at, f"receiver got webhook-id={r.headers['webhook-id']} and answered {r.status}")
              for r in receiver.got]  # fmt: skip
    events += [(at, what) for what, at in marks.items()]
    for attempt in job.webhook.attempts:
        events.append((
            attempt.time.ToNanoseconds() / 1e9,
            f"gateway attempt {attempt.number} (recorded): HTTP {attempt.http_status} {attempt.error[:60]!r} "
            f"({attempt.duration_s * 1000:.0f} ms)",
        ))  # fmt: skip
    lines += [f"  t={at - end:7.2f}  {what}" for at, what in sorted(events)]
    lines.append(f"  delivered={job.webhook.delivered} abandoned={job.webhook.abandoned}")
    text = "\n".join(lines)
    print(text)
    return text


# -- delivery ------------------------------------------------------------------------------------------------


def test_signed_event_delivered_on_the_third_try_after_two_500s(stack, receiver_factory):
    receiver = receiver_factory([500, 500, 204])
    job = submit(stack.stub, receiver.url)
    assert job.webhook.url == receiver.url and not job.webhook.attempts
    done = delivered_job(stack.stub, job.id, 3)
    timeline("500, 500, 204 (retry base 0.2 s)", done, receiver, {})
    assert [a.http_status for a in done.webhook.attempts] == [500, 500, 204]
    assert [a.number for a in done.webhook.attempts] == [1, 2, 3]
    assert done.webhook.delivered and not done.webhook.abandoned
    assert not done.webhook.HasField("next_attempt_time")
    assert "HTTP 500" in done.webhook.attempts[0].error and not done.webhook.attempts[2].error
    gaps = [b.at - a.at for a, b in zip(receiver.got, receiver.got[1:], strict=False)]
    assert 0.15 < gaps[0] < 1.0 and 1.1 < gaps[1] < 3.0, gaps  # 0.2 s, then 0.2 * 6 s
    assert len(receiver.got) == 3
    ids = {r.headers["webhook-id"] for r in receiver.got}
    assert ids == {done.webhook.event_id} and len({r.body for r in receiver.got}) == 1
    for request in receiver.got:
        assert request.path == "/hooks/synchuman?x=1"
        assert request.headers["content-type"] == "application/json"
        event = Webhook(SECRET).verify(request.body, request.headers)  # raises unless the signature holds
        assert abs(int(request.headers["webhook-timestamp"]) - request.at) < 5
    assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job.id
    assert event["data"]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()).verify(
            receiver.got[0].body, receiver.got[0].headers
        )
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=10) as http:
        shown = http.get(f"/v1/jobs/{job.id}").json()["job"]["webhook"]
    assert shown["delivered"] is True and [a["http_status"] for a in shown["attempts"]] == [500, 500, 204]
    assert shown["event_id"] == f"msg_{job.id}" and shown["attempts"][0]["time"].endswith("Z")


def test_cancelled_job_is_announced_and_a_redirect_is_not_followed(stack, receiver_factory):
    elsewhere = receiver_factory([200])
    receiver = receiver_factory([302, 200], redirect_to=elsewhere.url)
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway.http_port}", timeout=30) as http:
        slow = stack.doubles["stage1"].behaviour
        slow.step_s, slow.steps = 0.2, 50
        try:
            answer = http.post(
                "/v1/jobs", params={"callback_url": receiver.url}, content=photo(),
                headers={"content-type": "image/png"},
            )  # fmt: skip
            assert answer.status_code == 201, answer.text
            job_id = answer.json()["job"]["id"]
            assert answer.json()["job"]["webhook"] == {"url": receiver.url}
            assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        finally:
            slow.step_s, slow.steps = 0.0, 3
    done = delivered_job(stack.stub, job_id, 2)
    timeline("302 then 200 (cancelled job)", done, receiver, {})
    first, second = done.webhook.attempts
    assert first.http_status == 302 and "not followed" in first.error and elsewhere.url in first.error
    assert second.http_status == 200 and done.webhook.delivered
    assert elsewhere.got == []
    event = Webhook(SECRET).verify(receiver.got[1].body, receiver.got[1].headers)
    assert event["type"] == "job.cancelled"


# -- a gateway killed between attempts ---------------------------------------------------------------------


def spawn_gateway(address: str, targets: dict[str, str], data: Path, *extra: str) -> subprocess.Popen:
    """``python -m gateway`` with webhooks to 127.0.0.1 (retry base 2 s); returns once it is SERVING."""
    argv = [
        sys.executable, "-m", "gateway", "--log-level", "WARNING", "--address", address, "--http", "off",
        "--data-dir", str(data), "--poll-seconds", "0.2", "--webhook-allow-hosts", "127.0.0.1",
        "--webhook-allow-private", "--webhook-retry-base", "2",
        *[f"--{name}={target}" for name, target in targets.items()], *extra,
    ]  # fmt: skip
    env = dict(os.environ, SYNCHUMAN_GATEWAY_WEBHOOK_SECRET=SECRET)
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env)
    wait_until(lambda: health_status(address, SERVICE) == 1, 60, "the gateway")
    return process


@pytest.fixture
def stage_targets() -> Iterator[dict[str, str]]:
    servers, targets = [], {}
    for name in ("preprocess", "stage1", "stage2"):
        server, port, _ = start_doubles("127.0.0.1:0", [name], Behaviour())
        servers.append(server)
        targets[name] = f"127.0.0.1:{port}"
    yield targets
    for server in servers:
        server.stop(grace=None)


def kill_after_first_attempt(
    receiver: Receiver, address: str, first: subprocess.Popen, restart: Callable[[], object]
) -> tuple[reconstruction_pb2.Job, dict[str, float]]:
    """Submit a job to the gateway process ``first``, SIGKILL it once its first (failed) attempt is recorded
    (the retry is due 2 s later), ``restart()`` a gateway on the same store; the delivered job and the
    moments of the kill and of the restart."""
    stub = stub_for(address)
    job = submit(stub, receiver.url)
    delivered_job(stub, job.id, 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    marks = {"first gateway SIGKILLed": time.time()}
    stub = restart()
    marks["test saw the new gateway SERVING"] = time.time()
    return delivered_job(stub, job.id, 2), marks


def check_killed_run(job: reconstruction_pb2.Job, receiver: Receiver, title: str, marks: dict) -> None:
    timeline(title, job, receiver, marks)
    assert [a.http_status for a in job.webhook.attempts] == [500, 200] and job.webhook.delivered
    assert len(receiver.got) == 2 and receiver.got[0].headers["webhook-id"] == receiver.got[1].headers[
        "webhook-id"]  # fmt: skip
    for request in receiver.got:
        Webhook(SECRET).verify(request.body, request.headers)
    assert receiver.got[0].at < marks["first gateway SIGKILLed"] < receiver.got[1].at


def test_gateway_killed_between_attempts_delivers_after_restart_sqlite(
    stage_targets, receiver_factory, tmp_path
):
    receiver = receiver_factory([500, 200])
    address = f"127.0.0.1:{free_port()}"
    processes = [spawn_gateway(address, stage_targets, tmp_path / "data")]

    def restart():
        processes.append(spawn_gateway(address, stage_targets, tmp_path / "data"))
        return stub_for(address)

    try:
        job, marks = kill_after_first_attempt(receiver, address, processes[0], restart)
        check_killed_run(job, receiver, "SQLite: 500, gateway SIGKILLed, restarted, 200", marks)
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for this module's tests (each test makes its own database)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def fresh_database(server: PostgresServer) -> str:
    name = f"webhooks{next(_databases)}"
    create_database(server.url("postgres"), name)
    return server.url(name)


def test_second_gateway_delivers_after_the_first_is_killed_postgres(
    stage_targets, receiver_factory, tmp_path, postgres
):
    receiver = receiver_factory([500, 200])
    database = fresh_database(postgres)
    address = f"127.0.0.1:{free_port()}"
    first = spawn_gateway(
        address, stage_targets, tmp_path / "a", "--job-store", database, "--gateway-id", "a"
    )
    second: list[Gateway] = []

    def start_second():
        config = GatewayConfig(
            address="127.0.0.1:0", http_address="", data_dir=tmp_path / "b", database_url=database,
            gateway_id="b", preprocess_target=stage_targets["preprocess"],
            stage1_target=stage_targets["stage1"], stage2_target=stage_targets["stage2"],
            webhooks=settings(2.0),
        )  # fmt: skip
        second.append(Gateway(config))
        return stub_for(second[0].address)

    try:
        job, marks = kill_after_first_attempt(receiver, address, first, start_second)
        check_killed_run(job, receiver, "PostgreSQL: 500 from gateway a, a SIGKILLed, 200 from b", marks)
    finally:
        first.kill()
        first.wait()
        for gateway in second:
            gateway.stop(grace_s=0.5)


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox(request, tmp_path) -> Iterator[SqliteJobStore]:
    """A job store of each dialect (PostgreSQL: a fresh database on the module's server)."""
    if request.param == "sqlite":
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from gateway.store_postgres import PostgresJobStore

        store = PostgresJobStore(fresh_database(request.getfixturevalue("postgres")))
    yield store
    store.close()


def end_job(store, job_id: str, url: str = "http://hooks.example.com/") -> None:
    """Store a job with a callback URL and record its end (which queues its event)."""
    job = reconstruction_pb2.Job(id=job_id, state=reconstruction_pb2.JOB_STATE_QUEUED)
    job.webhook.url = url
    store.create(job, reconstruction_pb2.WatchJobResponse(sequence=1))
    job.state = reconstruction_pb2.JOB_STATE_SUCCEEDED
    store.save(job, reconstruction_pb2.WatchJobResponse(sequence=2, finished=job))


def test_outbox_claims_are_leased_fenced_and_disjoint(outbox):
    end_job(outbox, "j1")
    end_job(outbox, "j2")
    end_job(outbox, "j3")
    no_hook = reconstruction_pb2.Job(id="j4", state=reconstruction_pb2.JOB_STATE_QUEUED)
    outbox.create(no_hook, reconstruction_pb2.WatchJobResponse(sequence=1))
    no_hook.state = reconstruction_pb2.JOB_STATE_FAILED
    outbox.save(no_hook, reconstruction_pb2.WatchJobResponse(sequence=2, finished=no_hook))
    assert outbox.webhook_backlog() == 3 and outbox.next_webhook_due_s() == 0.0
    assert outbox.webhook_delivery("j4") is None
    claims: dict[str, list] = {}
    threads = [
        threading.Thread(target=lambda o=o: claims.setdefault(o, outbox.claim_webhooks(o, 0.5, 2)))
        for o in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [d.delivery.event_id for claimed in claims.values() for d in claimed]
    assert sorted(ids) == ["msg_j1", "msg_j2", "msg_j3"], claims  # each handed out once
    assert outbox.claim_webhooks("c", 0.5, 5) == [] and outbox.next_webhook_due_s() is None
    held_by_a = claims["a"][0].delivery
    held_by_a.attempts.add(number=1, http_status=500)
    time.sleep(0.6)  # the leases expire: gateway c takes the events over
    taken = {d.delivery.event_id: d for d in outbox.claim_webhooks("c", 30, 5)}
    assert set(taken) == set(ids)
    assert not outbox.record_webhook_attempt("a", held_by_a, 1.0)  # fenced: a lost its lease
    assert taken[held_by_a.event_id].job.state == reconstruction_pb2.JOB_STATE_SUCCEEDED
    for event_id, due in taken.items():
        due.delivery.attempts.add(number=1, http_status=200 if event_id == "msg_j1" else 500)
        assert outbox.record_webhook_attempt("c", due.delivery, None if event_id == "msg_j1" else 60.0)
    assert outbox.webhook_backlog() == 2 and 55 < outbox.next_webhook_due_s() <= 60
    assert outbox.webhook_delivery("j1").attempts[0].http_status == 200
    assert outbox.claim_webhooks("c", 30, 5) == []  # the others are due in a minute
    outbox.delete("j1")
    outbox.delete("j2")
    assert outbox.sweep_webhooks() == 1  # j1's delivery is done; j2's is still due, job deleted or not
    assert outbox.webhook_delivery("j2") is not None and outbox.release_webhooks("c") == 0


def test_delivery_abandoned_once_the_retry_period_has_passed(tmp_path, receiver_factory):
    """Retry base 0.1 ms: the schedule (0.1 ms x 6^n, at most 0.43 s) gives up once 1.73 s have passed since
    the first attempt; the backlog gauge and the outcome counter follow."""
    receiver = receiver_factory([500])
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    end_job(store, "doomed", receiver.url)
    retry = WebhookRetry(base_s=0.0001)
    before = {o: _counted(o) for o in ("retry", "abandoned")}
    assert _metric("synchuman_gateway_webhook_backlog") is not None
    dispatcher = WebhookDispatcher(store, WebhookSettings(SECRET, WebhookPolicy(("127.0.0.1",), True), retry,
                                                          5.0, 1, 0.05))  # fmt: skip
    assert _metric("synchuman_gateway_webhook_backlog") == 1
    dispatcher.start("gw")
    try:
        wait_until(lambda: store.webhook_delivery("doomed").abandoned, 20, "the delivery to be abandoned")
    finally:
        dispatcher.stop()
    delivery = store.webhook_delivery("doomed")
    times = [a.time.ToNanoseconds() / 1e9 for a in delivery.attempts]
    assert times[-1] - times[0] >= retry.window_s and times[-2] - times[0] < retry.window_s
    assert [a.http_status for a in delivery.attempts] == [500] * len(times) == [500] * len(receiver.got)
    assert not delivery.delivered and not delivery.HasField("next_attempt_time")
    assert _metric("synchuman_gateway_webhook_backlog") == 0 and store.next_webhook_due_s() is None
    assert _counted("abandoned") - before["abandoned"] == 1
    assert _counted("retry") - before["retry"] == len(times) - 1
    store.close()


def _metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _counted(outcome: str) -> float:
    return _metric("synchuman_gateway_webhook_deliveries_total", outcome=outcome) or 0.0


# -- one request: pinned address, TLS name check, deadline ---------------------------------------------


def _tls_receiver(folder: Path, ca: CertificateAuthority, name: str) -> Receiver:
    """A :class:`Receiver` over TLS with a certificate for ``name``."""
    receiver = Receiver([200])
    pem = ca.issue(name, (name,))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem.cert, pem.key)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    return receiver


def test_https_goes_to_the_checked_address_with_the_hosts_name_and_certificate(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    trusted = ssl.create_default_context(cafile=str(ca.pem.cert))
    right, wrong = (
        _tls_receiver(tmp_path, ca, "hooks.example.com"),
        _tls_receiver(tmp_path, ca, "other.example"),
    )
    try:
        for receiver, delivered in ((right, True), (wrong, False)):
            target = Target(
                "", "hooks.example.com", receiver.server.server_port, True, "/in"
            )  # the name does not resolve here: only the checked address is dialled
            result = post(target, "127.0.0.1", {"webhook-id": "msg_x"}, b"{}", 5.0, trusted)
            assert result.delivered is delivered, result
        assert right.got[0].headers["host"] == f"hooks.example.com:{right.server.server_port}"
        assert "certificate" in result.error.lower() and wrong.got == []
    finally:
        right.close()
        wrong.close()


def test_a_receiver_that_never_answers_is_cut_off_at_the_deadline():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (backlog) and never answers
    try:
        target = Target("", "127.0.0.1", silent.getsockname()[1], False, "/")
        started = time.monotonic()
        result = post(target, "127.0.0.1", {}, b"{}", 0.5)
        assert time.monotonic() - started < 2.0
        assert result.http_status == 0 and result.error == "no answer within 0.5 s", result
    finally:
        silent.close()


# -- the SSRF policy -------------------------------------------------------------------------------------


def _refusal(error: grpc.RpcError) -> str:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations += [v.field for v in request.field_violations]
    assert violations == ["callback_url"], violations
    return error.details()


def test_callback_urls_refused_at_submission(tmp_path):
    strict = Stack(
        tmp_path, http_address="127.0.0.1:0",
        webhooks=settings(0.2, allow_private=False, hosts=("127.0.0.1", "10.0.0.7", "*.example.com")),
    )  # fmt: skip
    try:
        cases = {
            "http://127.0.0.1:9/hook": "127.0.0.1, a loopback address",
            "http://10.0.0.7/hook": "10.0.0.7, a private address",
            "http://[::1]:9/hook": "not on this gateway's allow-list",
            "http://evil.test/hook": "'evil.test' is not on this gateway's allow-list",
            "ftp://127.0.0.1/hook": "http:// or https:// URL, not ftp://",
            "http://user:pw@127.0.0.1/hook": "must not contain a user name or password",
            "http://127.0.0.1/" + "a" * MAX_URL_CHARS: f"at most {MAX_URL_CHARS}",
            "http://127.0.0.1/a b": "spaces or control characters",
            "http://bücher.example.com/": "must be ASCII",
            "hooks.example.com/x": "not a relative:// one",
        }
        for url, reason in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                submit(strict.stub, url)
            assert reason in _refusal(err.value), (url, err.value.details())
        with httpx.Client(base_url=f"http://127.0.0.1:{strict.gateway.http_port}", timeout=30) as http:
            answer = http.post(
                "/v1/jobs", files={"image": ("p.png", photo(), "image/png")},
                data={"callback_url": "http://10.0.0.7/hook"},
            )  # fmt: skip
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and "--webhook-allow-private" in error["message"]
        assert error["details"][0]["field_violations"][0]["field"] == "callback_url"
        assert strict.stub.ListJobs(reconstruction_pb2.ListJobsRequest(), timeout=10).jobs == []
    finally:
        strict.close()


def test_addresses_checked_again_at_delivery_dns_rebinding(tmp_path, receiver_factory):
    """The host resolved to a public address at submission and to loopback at delivery: nothing is sent,
    the attempt records the refusal and is retried."""
    receiver = receiver_factory([200])
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    policy = WebhookPolicy(("hooks.example.com",), resolver=lambda host, port: next(answers))
    url = receiver.url.replace("127.0.0.1", "hooks.example.com")
    policy.check_submitted(url)  # the submission's check passes
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job = reconstruction_pb2.Job(id="rebound", state=reconstruction_pb2.JOB_STATE_QUEUED)
    job.webhook.url = url
    store.create(job, reconstruction_pb2.WatchJobResponse(sequence=1))
    job.state = reconstruction_pb2.JOB_STATE_FAILED
    store.save(job, reconstruction_pb2.WatchJobResponse(sequence=2, finished=job))
    dispatcher = WebhookDispatcher(store, WebhookSettings(SECRET, policy, WebhookRetry(60.0), 5.0, 1, 0.05))
    dispatcher.start("gw")
    try:
        wait_until(lambda: store.webhook_delivery("rebound").attempts, 10, "the attempt")
    finally:
        dispatcher.stop()
    delivery = store.webhook_delivery("rebound")
    (attempt,) = delivery.attempts
    assert attempt.http_status == 0 and "127.0.0.1, a loopback address" in attempt.error
    assert not delivery.delivered and delivery.HasField("next_attempt_time") and receiver.got == []
    assert store.webhook_backlog() == 1
    store.close()


def test_policy_addresses_and_allow_list() -> None:
    def policy(*addresses: str, private: bool = False) -> WebhookPolicy:
        return WebhookPolicy(("*.example.com", "203.0.113.5"), private, lambda host, port: list(addresses))

    target = policy().check_url("https://hooks.example.com/x?y=1")
    assert (target.host, target.port, target.tls, target.path) == ("hooks.example.com", 443, True, "/x?y=1")
    assert policy("93.184.215.14", "8.8.8.8").addresses(target) == ["93.184.215.14", "8.8.8.8"]
    for address, kind in [
        ("169.254.169.254", "link-local"),
        ("192.168.1.2", "private"),
        ("::1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "non-public"),
    ]:
        with pytest.raises(WebhookRefused, match=f"a {kind} address"):
            policy("93.184.215.14", address).addresses(target)  # one bad address refuses them all
        assert policy(address, private=True).addresses(target) == [address]
    with pytest.raises(WebhookRefused, match="which is no host"):
        policy("0.0.0.0", private=True).addresses(target)
    with pytest.raises(WebhookRefused, match="not on this gateway's allow-list"):
        policy().check_url("http://example.com/")  # *.example.com is subdomains only
    with pytest.raises(WebhookRefused, match="sends no webhooks"):
        WebhookPolicy().check_url("https://hooks.example.com/")
    with pytest.raises(WebhookRefused, match="does not resolve"):
        WebhookPolicy(("*",)).check_submitted("http://no-such-host.invalid/")
    assert parse_allow_hosts("Hooks.Example.com., *.example.org 203.0.113.5") == (
        "hooks.example.com",
        "*.example.org",
        "203.0.113.5",
    )
    with pytest.raises(ValueError, match="no host pattern"):
        parse_allow_hosts("https://hooks.example.com/")


def test_retry_schedule_spans_at_least_24_hours() -> None:
    retry = WebhookRetry()
    delays, elapsed = [], 0.0
    while not retry.gives_up(elapsed):
        delays.append(retry.delay_s(len(delays) + 1))
        elapsed += delays[-1]
    assert delays[:5] == [5, 30, 180, 1080, 6480] and set(delays[5:]) == {6 * 3600}
    assert elapsed >= 24 * 3600 and len(delays) + 1 == 10, (elapsed, delays)


def test_event_body_is_stable_and_typed() -> None:
    job = reconstruction_pb2.Job(id="j1", state=reconstruction_pb2.JOB_STATE_FAILED)
    job.end_time.FromSeconds(1_800_000_000)
    body = event_body(job)
    assert body == event_body(job)
    assert json.loads(body) == {
        "type": "job.failed", "timestamp": "2027-01-15T08:00:00Z",
        "data": {"job": {"id": "j1", "state": "JOB_STATE_FAILED", "end_time": "2027-01-15T08:00:00Z"}},
    }  # fmt: skip


def test_command_line_options(tmp_path) -> None:
    def parse(*argv: str) -> WebhookSettings:
        parser = argparse.ArgumentParser()
        add_webhook_arguments(parser)
        args = parser.parse_args(argv)
        args.poll_seconds = 1.0
        return webhook_settings_from_args(args)

    assert not parse().enabled
    (tmp_path / "secret").write_text(SECRET + "\n")
    made = parse(
        "--webhook-secret-file", str(tmp_path / "secret"), "--webhook-allow-hosts", "a.example,b.example"
    )
    assert made.enabled and made.secret == SECRET and made.policy.allow_hosts == ("a.example", "b.example")
    assert not made.policy.allow_private and made.retry.base_s == 5.0
    with pytest.raises(CommandLineError, match="needs a signing secret"):
        parse("--webhook-allow-hosts", "a.example")
    with pytest.raises(CommandLineError, match="24 to 64"):
        parse("--webhook-secret", "whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(CommandLineError, match="not whsec_ followed by base64"):
        parse("--webhook-secret", "whsec_not base64!")
    with pytest.raises(CommandLineError, match="either directly or as a file"):
        parse("--webhook-secret", SECRET, "--webhook-secret-file", str(tmp_path / "secret"))
    assert check_secret(SECRET) == SECRET
