"""The Python client package (clients/python, ``synchuman_client``) against a live gateway with the real stage
services on tiny random checkpoints (CPU): the scenarios of the TypeScript client's tests
(clients/typescript/test/client.test.mjs) on the sync and the asyncio API. One deployment and one finished job
are shared by the module.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from pathlib import Path

import grpc
import pytest
from PIL import Image
from synchuman_client import (
    AsyncClient,
    Client,
    JobOptions,
    SyncHumanError,
    job_error,
    reconstruction_pb2,
)

from services.launcher import EmbeddedConfig, start_embedded
from synchuman_cli.commands.selftest import synthetic_person

pytestmark = pytest.mark.slow

TOKEN = "python-client-token"
STATES = reconstruction_pb2
#: The cheapest job options on a CPU: one sampler step per stage, no bake optimisation, 1 % of the faces kept
#: (about a third quicker than tests/node/deployment.mjs' SMALL_OPTIONS; stage 2's decode and multiview
#: features, which no option shortens, are most of what is left).
SMALL = {
    "multiview": {"steps": 1},
    "reconstruction": {
        "steps": 1, "texture_size": 256, "bake_steps": 0, "visibility_views": 8, "simplify_ratio": 0.99,
    },
}


@pytest.fixture(scope="module")
def stack(tiny_ckpts, tmp_path_factory):
    """The four services on free ports; the gateway requires TOKEN. Yields (config, data_dir)."""
    data_dir = tmp_path_factory.mktemp("python-client") / "jobs"
    config = EmbeddedConfig.with_free_ports(
        ckpts=tiny_ckpts,
        device="cpu",
        dtype="float32",
        data_dir=data_dir,
        log_level="WARNING",
        stage_args=["--max-queue", "1", "--grace", "2"],
        gateway_args=["--auth-token", TOKEN, "--stage-timeout", "14400"],  # tiny weights: long jobs allowed
        env={"OMP_NUM_THREADS": "1"},
    )
    supervisor = start_embedded(config, ready_timeout_s=300)
    yield config, data_dir
    supervisor.stop()


@pytest.fixture(scope="module")
def client(stack):
    config, _ = stack
    with Client(config.address("gateway"), token=TOKEN) as opened:
        yield opened


@pytest.fixture(scope="module")
def finished(client):
    """A synthetic person (a PIL image) submitted and watched to its end: (final job, every event)."""
    job = client.submit(Image.fromarray(synthetic_person(), "RGBA"), JobOptions(**SMALL))
    assert job.state == STATES.JOB_STATE_QUEUED
    events = list(client.watch(job.id, timeout_s=600))
    return events[-1].finished, events


def _code(error: pytest.ExceptionInfo[SyncHumanError], code: grpc.StatusCode) -> SyncHumanError:
    assert error.value.code == code, str(error.value)
    return error.value


def test_a_pil_image_becomes_a_glb_with_events_in_order(client, finished):
    job, events = finished
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].WhichOneof("event") is None, "the first event only records the stored job"
    stages = [e.progress.stage for e in events if e.WhichOneof("event") == "progress"]
    assert stages == sorted(stages) and set(stages) == {1, 2, 3}, "preprocess -> multiview -> reconstruction"
    assert [e.stage_completed for e in events if e.WhichOneof("event") == "stage_completed"] == [1, 2, 3]
    assert job.state == STATES.JOB_STATE_SUCCEEDED, job.error.message
    glb = client.download(job.id, "person.glb")
    assert glb[:4] == b"glTF"
    assert len(glb) == next(a.blob.size_bytes for a in job.artifacts if a.blob.name == "person.glb")
    assert client.get(job.id).state == STATES.JOB_STATE_SUCCEEDED
    assert job_error(job) is None


class CuttingProxy:
    """A TCP proxy to ``port`` (a test double of a network that drops): once :attr:`cut_after` is set, the
    next connection is closed after that many bytes from the server. :attr:`served` holds the bytes each
    connection passed from the server so far (counted before they are passed on), :attr:`cuts` the cuts."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut_after: int | None = None
        self.served: list[int] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            limit, self.cut_after = self.cut_after, None
            upstream = socket.create_connection(self.upstream)
            self.served.append(0)
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            args = (upstream, downstream, len(self.served) - 1, limit)
            threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slot: int = -1, limit: int | None = None):
        try:
            while data := source.recv(4096):
                if slot >= 0:
                    self.served[slot] += len(data)
                if limit is not None and self.served[slot] >= limit:
                    sink.sendall(data[: len(data) - (self.served[slot] - limit)])
                    self.cuts += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_watch_resumes_after_a_dropped_stream_without_losing_or_repeating_events(stack, client, finished):
    config, _ = stack
    job, events = finished
    proxy = CuttingProxy(config.ports["gateway"])
    own = {"token": TOKEN, "channel_options": [("grpc.use_local_subchannel_pool", 1)]}  # a connection each
    try:
        with Client(proxy.address, **own) as whole:
            assert list(whole.watch(job.id)) == events
        assert len(proxy.served) == 1
        total = proxy.served[0]  # the server's bytes of one whole watch (connection set-up included)
        proxy.cut_after = total // 2
        with Client(proxy.address, **own) as flaky:
            assert list(flaky.watch(job.id, reconnect_delay_s=0.1)) == events
        assert proxy.cuts == 1 and len(proxy.served) >= 3, "the cut connection and a new one"

        async def watch_async() -> list[reconstruction_pb2.WatchJobResponse]:
            async with AsyncClient(proxy.address, **own) as flaky_async:
                return [event async for event in flaky_async.watch(job.id, reconnect_delay_s=0.1)]

        proxy.cut_after = total // 2
        assert asyncio.run(watch_async()) == events
        assert proxy.cuts == 2
    finally:
        proxy.close()
    resumed = list(client.watch(job.id, after_sequence=3))
    assert resumed[0].sequence == 4 and resumed == events[3:]
    assert list(client.watch(job.id, after_sequence=events[-1].sequence)) == [], "nothing after the last"


def _stored(data_dir: Path, job_id: str, name: str) -> Path:
    return next(data_dir.glob(f"**/{job_id}/{name}"))


def test_download_checks_size_and_sha256_to_bytes_path_and_stream(client, finished, stack, tmp_path):
    _, data_dir = stack
    job, _ = finished
    for artifact in job.artifacts:
        data = client.download(job.id, artifact.blob.name)
        assert len(data) == artifact.blob.size_bytes, artifact.blob.name
    header = client.download(job.id, "person.glb", tmp_path / "person.glb")
    assert (tmp_path / "person.glb").stat().st_size == header.size_bytes
    stream = io.BytesIO()
    assert client.download(job.id, "mask.png", stream).sha256 and stream.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(SyncHumanError) as missing:
        client.download(job.id, "no-such-file.bin")
    _code(missing, grpc.StatusCode.NOT_FOUND)

    # Damaged storage the gateway cannot see (its checksum file removed): the client's own checks catch it.
    truncated = _stored(data_dir, job.id, "framed.png")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    truncated.with_name(".framed.png.sha256").unlink()
    with pytest.raises(SyncHumanError) as short:
        client.download(job.id, "framed.png", tmp_path / "framed.png")
    assert "bytes" in _code(short, grpc.StatusCode.DATA_LOSS).message
    assert not list(tmp_path.glob("*framed*")), "a failed download leaves no file"
    flipped = _stored(data_dir, job.id, "conditioning.png")
    data = bytearray(flipped.read_bytes())
    data[100] ^= 1
    flipped.write_bytes(bytes(data))
    flipped.with_name(".conditioning.png.sha256").unlink()
    with pytest.raises(SyncHumanError) as corrupted:
        client.download(job.id, "conditioning.png")
    assert "SHA-256" in _code(corrupted, grpc.StatusCode.DATA_LOSS).message


def test_errors_carry_the_code_and_decoded_details(stack, client, finished):
    config, _ = stack
    with pytest.raises(SyncHumanError) as unknown_profile:
        client.submit(Image.fromarray(synthetic_person(), "RGBA"), JobOptions(profile="no-such-profile"))
    refused = _code(unknown_profile, grpc.StatusCode.INVALID_ARGUMENT)
    assert refused.details.bad_request.field_violations[0].field == "options.profile"
    assert "standard" in refused.message
    with pytest.raises(SyncHumanError) as no_webhooks:  # the URL travels; this gateway has no webhooks
        client.submit(Image.fromarray(synthetic_person(), "RGBA"), callback_url="https://hooks.example.com/x")
    violation = _code(no_webhooks, grpc.StatusCode.INVALID_ARGUMENT).details.bad_request.field_violations[0]
    assert violation.field == "callback_url"
    with pytest.raises(SyncHumanError) as no_job:
        client.get("no-such-job")
    assert _code(no_job, grpc.StatusCode.NOT_FOUND).details.error_info.reason == "JOB_NOT_FOUND"
    with pytest.raises(SyncHumanError) as bad_token:
        client.list_jobs(page_token="forged")
    assert _code(bad_token, grpc.StatusCode.INVALID_ARGUMENT).details.bad_request.field_violations
    for token in (None, "wrong"):
        with Client(config.address("gateway"), token=token) as other:
            with pytest.raises(SyncHumanError) as unauthenticated:
                other.get(finished[0].id)
        assert "token" in _code(unauthenticated, grpc.StatusCode.UNAUTHENTICATED).message

    png = io.BytesIO()
    Image.fromarray(synthetic_person(), "RGBA").save(png, format="PNG")
    try:  # refused by SubmitJob or, inside the job, by preprocess: the same Status then is in Job.error
        ended = client.wait(client.submit(png.getvalue()[:2000], JobOptions(**SMALL)).id, timeout_s=300)
        truncated = job_error(ended)
    except SyncHumanError as refused:
        truncated = refused
    assert truncated.code == grpc.StatusCode.INVALID_ARGUMENT and "truncat" in truncated.message.lower()
    violations = truncated.details.bad_request.field_violations if truncated.details.bad_request else []
    assert violations or truncated.details.input_quality, "a BadRequest or quality-report detail"

    blank = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 200, 200)).save(blank, format="PNG")  # no person in it
    ended = client.wait(client.submit(blank.getvalue(), JobOptions(**SMALL)).id, timeout_s=300)
    assert ended.state == STATES.JOB_STATE_FAILED
    error = job_error(ended)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, str(error)
    report = error.details.input_quality
    assert report.width == 320 and any(issue.code == "EMPTY_MASK" for issue in report.issues), report


def test_profiles_are_listed_with_their_effective_options(client, finished):
    profiles = {profile.name: profile for profile in client.profiles()}
    assert next(iter(profiles)) == "standard" and {"web", "game", "ar", "preview-only"} <= set(profiles)
    game = profiles["game"]
    assert game.options.reconstruction.target_faces == 20000
    assert game.effective_options.reconstruction.target_faces == 20000
    assert game.effective_options.multiview.steps > 0, "unset options show the server defaults"
    assert finished[0].options.profile == finished[0].effective_options.profile == "standard"


def test_asyncio_running_job_deadline_cancel_and_delete(stack, tmp_path):
    """On the asyncio client: submit a file, a running job refuses delete, a short wait deadline expires,
    cancel stops it, then delete removes it and its files."""
    path = tmp_path / "person.png"
    Image.fromarray(synthetic_person(), "RGBA").save(path)
    options = JobOptions(**{**SMALL, "multiview": {"steps": 200}})
    target = stack[0].address("gateway")

    async def scenario() -> None:
        async with AsyncClient(target, token=TOKEN) as aclient:
            job = await aclient.submit(path, options, idempotency_key=f"cancel-{path.stat().st_mtime_ns}")
            async for event in aclient.watch(job.id, timeout_s=300):
                if event.WhichOneof("event") == "progress" and event.progress.stage == 2:
                    break
            with pytest.raises(SyncHumanError) as running:
                await aclient.delete(job.id)
            assert "cancel" in _code(running, grpc.StatusCode.FAILED_PRECONDITION).message
            with pytest.raises(SyncHumanError) as late:
                await aclient.wait(job.id, timeout_s=0.5)
            assert "0.5 s" in _code(late, grpc.StatusCode.DEADLINE_EXCEEDED).message
            cancelled = await aclient.cancel(job.id)
            if cancelled.state != STATES.JOB_STATE_CANCELLED:
                cancelled = await aclient.wait(job.id, timeout_s=120)
            assert cancelled.state == STATES.JOB_STATE_CANCELLED
            assert await aclient.delete(job.id) >= 1, "the photo at least"
            with pytest.raises(SyncHumanError) as gone:
                await aclient.get(job.id)
            assert _code(gone, grpc.StatusCode.NOT_FOUND).details.error_info.reason == "JOB_NOT_FOUND"

    asyncio.run(scenario())


def test_list_pages_newest_first_and_filters_by_state(stack, client, finished):
    everything = client.list_jobs(page_size=1000)
    assert not everything.next_page_token
    assert len(everything.jobs) >= 2, "the finished job and the failed one"
    first = client.list_jobs(page_size=1)
    assert len(first.jobs) == 1 and first.next_page_token
    paged = [job.id for job in client.iter_jobs(page_size=1)]
    assert paged == [job.id for job in everything.jobs]
    times = [job.create_time.ToNanoseconds() for job in everything.jobs]
    assert times == sorted(times, reverse=True)
    succeeded = client.list_jobs(state=STATES.JOB_STATE_SUCCEEDED).jobs
    assert finished[0].id in {job.id for job in succeeded}
    assert {job.state for job in succeeded} == {STATES.JOB_STATE_SUCCEEDED}

    async def iterate() -> list[str]:
        async with AsyncClient(stack[0].address("gateway"), token=TOKEN) as aclient:
            return [job.id async for job in aclient.iter_jobs(page_size=1)]

    assert asyncio.run(iterate()) == paged


def test_deleting_a_finished_job_removes_it_and_its_files(client, finished):
    job, _ = finished
    assert client.delete(job.id) == len(job.artifacts)
    with pytest.raises(SyncHumanError) as gone:
        client.download(job.id, "person.glb")
    _code(gone, grpc.StatusCode.NOT_FOUND)
