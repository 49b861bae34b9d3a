"""The blocking client of a SyncHuman Serve gateway (``synchuman.v1.ReconstructionService`` over gRPC).

    with Client("127.0.0.1:50051", token=os.environ.get("SYNCHUMAN_GATEWAY_AUTH_TOKEN")) as client:
        job = client.submit("photo.jpg")
        for event in client.watch(job.id):
            print(event.sequence, event.WhichOneof("event"))
        client.download(job.id, "person.glb", "person.glb")

Every failure is a :class:`~synchuman_client.errors.SyncHumanError` (gRPC code, message, decoded details).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

import grpc

from synchuman_client._proto import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc
from synchuman_client.errors import SyncHumanError, rpc_errors
from synchuman_client.jobs import TERMINAL_STATES, CallSettings, JobPage, list_request
from synchuman_client.transfer import ArtifactReceiver, Destination, Photo, photo_bytes, upload_requests
from synchuman_client.watching import Resumption


class Client:
    """Client of one gateway. ``target``: "host:port"; ``token``: the gateway's bearer token when it requires
    one; ``credentials``: TLS (``grpc.ssl_channel_credentials(...)``; None: plaintext); ``channel_options``:
    extra gRPC channel options; ``timeout_s``: default deadline of unary calls, uploads and downloads.
    ``channel``: use this channel instead of opening one (it is not closed by :meth:`close`)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        timeout_s: float = 60.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._own_channel = channel is None
        if channel is None:
            options = list(channel_options)
            channel = (
                grpc.secure_channel(target, credentials, options=options)
                if credentials is not None
                else grpc.insecure_channel(target, options=options)
            )
        self.channel = channel
        #: The generated stub, for calls this layer does not wrap.
        self.stub = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        self._settings = CallSettings(token, timeout_s)

    def close(self) -> None:
        """Close the channel (when this client opened it)."""
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": self._settings.timeout(timeout_s), "metadata": self._settings.metadata}

    def submit(
        self,
        photo: Photo,
        options: common_pb2.JobOptions | None = None,
        *,
        idempotency_key: str = "",
        callback_url: str = "",
        timeout_s: float | None = None,
    ) -> reconstruction_pb2.Job:
        """Upload a photo (bytes, a file path or a PIL image) and store a job; returns it (state QUEUED, or
        whatever state the job of a known ``idempotency_key`` has). ``options``: unset fields take the named
        profile's (``options.profile``), then the server's defaults. ``callback_url``: the gateway POSTs a
        signed event there when the job ends (its webhooks must be configured; ``Job.webhook`` shows the
        deliveries)."""
        data, media_type = photo_bytes(photo)
        with rpc_errors():
            response = self.stub.SubmitJob(
                upload_requests(data, options, idempotency_key, media_type, callback_url),
                **self._call(timeout_s),
            )
        return response.job

    def watch(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        timeout_s: float | None = None,
        max_reconnects: int = 5,
        reconnect_delay_s: float = 0.5,
    ) -> Iterator[reconstruction_pb2.WatchJobResponse]:
        """The job's events in order until its ``finished`` event, resuming after a dropped stream without
        losing or repeating an event (see :mod:`synchuman_client.watching`). ``timeout_s`` bounds the whole
        watch (None: no deadline, a job can take long). The first event (sequence 1) sets no ``event``."""
        resumption = Resumption(job_id, after_sequence, timeout_s, max_reconnects, reconnect_delay_s)
        while True:
            failure = None
            call = self.stub.WatchJob(
                resumption.request(), timeout=resumption.call_timeout(), metadata=self._settings.metadata
            )
            try:
                for event in call:
                    finished = resumption.seen(event)
                    yield event
                    if finished:
                        return
            except grpc.RpcError as exc:
                failure = SyncHumanError.from_rpc_error(exc)
            finally:
                call.cancel()
            if failure is None and self.get(job_id).state in TERMINAL_STATES:
                return  # closed cleanly after the last event: ``after_sequence`` was the job's last already
            time.sleep(resumption.retry_delay(failure))

    def wait(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """Watch until the job ends; returns the final job whatever its state (see ``jobs.job_error``).
        ``DEADLINE_EXCEEDED`` when it has not ended within ``timeout_s``."""
        *_, last = self.watch(job_id, timeout_s=timeout_s)  # the last event is always ``finished``
        return last.finished

    @overload
    def download(
        self, job_id: str, name: str, to: None = None, *, timeout_s: float | None = None
    ) -> bytes: ...

    @overload
    def download(
        self, job_id: str, name: str, to: Destination, *, timeout_s: float | None = None
    ) -> common_pb2.BlobHeader: ...

    def download(
        self, job_id: str, name: str, to: Destination = None, *, timeout_s: float | None = None
    ) -> bytes | common_pb2.BlobHeader:
        """One stored file of a job (see ``Job.artifacts``), checked: chunk offsets, size and SHA-256 against
        the header (``DATA_LOSS`` otherwise). ``to`` None: returns the bytes; a path: writes the file (only
        once it checked out) and returns the header; a binary stream: writes into it, returns the header."""
        receiver = ArtifactReceiver(name, to)
        try:
            with rpc_errors():
                request = reconstruction_pb2.GetArtifactRequest(job_id=job_id, name=name)
                for message in self.stub.GetArtifact(request, **self._call(timeout_s)):
                    receiver.add(message)
            header = receiver.finish()
        except BaseException:
            receiver.abandon()
            raise
        return receiver.data() if to is None else header

    def get(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """The job's current state (NOT_FOUND for an unknown id)."""
        request = reconstruction_pb2.GetJobRequest(job_id=job_id)
        with rpc_errors():
            return self.stub.GetJob(request, **self._call(timeout_s)).job

    def cancel(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """Cancel a queued or running job; returns it (CANCELLED, or still RUNNING if its stage is slow to
        stop: the CANCELLED state then follows on :meth:`watch`). A finished job is returned unchanged."""
        request = reconstruction_pb2.CancelJobRequest(job_id=job_id)
        with rpc_errors():
            return self.stub.CancelJob(request, **self._call(timeout_s)).job

    def delete(self, job_id: str, *, timeout_s: float | None = None) -> int:
        """Delete a finished job and its stored files; returns how many files were removed
        (FAILED_PRECONDITION for a job still queued or running)."""
        request = reconstruction_pb2.DeleteJobRequest(job_id=job_id)
        with rpc_errors():
            return self.stub.DeleteJob(request, **self._call(timeout_s)).deleted_artifacts

    def list_jobs(
        self,
        *,
        page_size: int = 50,
        page_token: str = "",
        state: reconstruction_pb2.JobState.ValueType = reconstruction_pb2.JOB_STATE_UNSPECIFIED,
        timeout_s: float | None = None,
    ) -> JobPage:
        """One page of jobs, newest first (``state``: only jobs in it; unset: all)."""
        with rpc_errors():
            response = self.stub.ListJobs(list_request(page_size, page_token, state), **self._call(timeout_s))
        return JobPage(list(response.jobs), response.next_page_token)

    def iter_jobs(
        self,
        *,
        page_size: int = 50,
        state: reconstruction_pb2.JobState.ValueType = reconstruction_pb2.JOB_STATE_UNSPECIFIED,
    ) -> Iterator[reconstruction_pb2.Job]:
        """Every job, newest first, fetching the pages as they are needed."""
        token = ""
        while True:
            page = self.list_jobs(page_size=page_size, page_token=token, state=state)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def profiles(self, *, timeout_s: float | None = None) -> list[reconstruction_pb2.Profile]:
        """The gateway's named output profiles ("standard" first) with the options each sets and its
        effective options; a job names one in ``options.profile``."""
        request = reconstruction_pb2.ListProfilesRequest()
        with rpc_errors():
            response = self.stub.ListProfiles(request, **self._call(timeout_s))
        return list(response.profiles)
