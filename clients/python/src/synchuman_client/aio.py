"""The asyncio client of a SyncHuman Serve gateway (``grpc.aio``), with the same methods as
:class:`synchuman_client.Client`:

    async with AsyncClient("127.0.0.1:50051") as client:
        job = await client.submit("photo.jpg")
        async for event in client.watch(job.id):
            print(event.sequence, event.WhichOneof("event"))
        await client.download(job.id, "person.glb", "person.glb")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, overload

import grpc
import grpc.aio

from synchuman_client._proto import common_pb2, reconstruction_pb2, reconstruction_pb2_grpc
from synchuman_client.errors import SyncHumanError, rpc_errors
from synchuman_client.jobs import TERMINAL_STATES, CallSettings, JobPage, list_request
from synchuman_client.transfer import ArtifactReceiver, Destination, Photo, photo_bytes, upload_requests
from synchuman_client.watching import Resumption


class AsyncClient:
    """Asyncio client of one gateway; the arguments are those of :class:`synchuman_client.Client`
    (``channel``: a ``grpc.aio.Channel``). Create it inside the running event loop."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        timeout_s: float = 60.0,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._own_channel = channel is None
        if channel is None:
            options = list(channel_options)
            channel = (
                grpc.aio.secure_channel(target, credentials, options=options)
                if credentials is not None
                else grpc.aio.insecure_channel(target, options=options)
            )
        self.channel = channel
        #: The generated stub (asyncio flavour), for calls this layer does not wrap.
        self.stub = reconstruction_pb2_grpc.ReconstructionServiceStub(channel)
        self._settings = CallSettings(token, timeout_s)

    async def close(self) -> None:
        """Close the channel (when this client opened it)."""
        if self._own_channel:
            await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _call(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": self._settings.timeout(timeout_s), "metadata": self._settings.metadata}

    async def submit(
        self,
        photo: Photo,
        options: common_pb2.JobOptions | None = None,
        *,
        idempotency_key: str = "",
        callback_url: str = "",
        timeout_s: float | None = None,
    ) -> reconstruction_pb2.Job:
        """Upload a photo (bytes, a file path or a PIL image) and store a job; see ``Client.submit``."""
        data, media_type = await asyncio.to_thread(photo_bytes, photo)
        with rpc_errors():
            response = await self.stub.SubmitJob(
                upload_requests(data, options, idempotency_key, media_type, callback_url),
                **self._call(timeout_s),
            )
        return response.job

    async def watch(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        timeout_s: float | None = None,
        max_reconnects: int = 5,
        reconnect_delay_s: float = 0.5,
    ) -> AsyncIterator[reconstruction_pb2.WatchJobResponse]:
        """The job's events in order until ``finished``, resuming after a dropped stream; see
        ``Client.watch``."""
        resumption = Resumption(job_id, after_sequence, timeout_s, max_reconnects, reconnect_delay_s)
        while True:
            failure = None
            call = self.stub.WatchJob(
                resumption.request(), timeout=resumption.call_timeout(), metadata=self._settings.metadata
            )
            try:
                async for event in call:
                    finished = resumption.seen(event)
                    yield event
                    if finished:
                        return
            except grpc.RpcError as exc:
                failure = SyncHumanError.from_rpc_error(exc)
            finally:
                call.cancel()
            if failure is None and (await self.get(job_id)).state in TERMINAL_STATES:
                return  # closed cleanly after the last event: ``after_sequence`` was the job's last already
            await asyncio.sleep(resumption.retry_delay(failure))

    async def wait(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """Watch until the job ends; returns the final job (``DEADLINE_EXCEEDED`` after ``timeout_s``)."""
        async for event in self.watch(job_id, timeout_s=timeout_s):
            last = event  # the last event is always ``finished``
        return last.finished

    @overload
    async def download(
        self, job_id: str, name: str, to: None = None, *, timeout_s: float | None = None
    ) -> bytes: ...

    @overload
    async def download(
        self, job_id: str, name: str, to: Destination, *, timeout_s: float | None = None
    ) -> common_pb2.BlobHeader: ...

    async def download(
        self, job_id: str, name: str, to: Destination = None, *, timeout_s: float | None = None
    ) -> bytes | common_pb2.BlobHeader:
        """One stored file of a job, checked (``DATA_LOSS`` otherwise); see ``Client.download``."""
        receiver = ArtifactReceiver(name, to)
        try:
            with rpc_errors():
                request = reconstruction_pb2.GetArtifactRequest(job_id=job_id, name=name)
                async for message in self.stub.GetArtifact(request, **self._call(timeout_s)):
                    receiver.add(message)
            header = receiver.finish()
        except BaseException:
            receiver.abandon()
            raise
        return receiver.data() if to is None else header

    async def get(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """The job's current state (NOT_FOUND for an unknown id)."""
        with rpc_errors():
            response = await self.stub.GetJob(
                reconstruction_pb2.GetJobRequest(job_id=job_id), **self._call(timeout_s)
            )
        return response.job

    async def cancel(self, job_id: str, *, timeout_s: float | None = None) -> reconstruction_pb2.Job:
        """Cancel a queued or running job; see ``Client.cancel``."""
        request = reconstruction_pb2.CancelJobRequest(job_id=job_id)
        with rpc_errors():
            response = await self.stub.CancelJob(request, **self._call(timeout_s))
        return response.job

    async def delete(self, job_id: str, *, timeout_s: float | None = None) -> int:
        """Delete a finished job and its stored files; returns how many files were removed."""
        request = reconstruction_pb2.DeleteJobRequest(job_id=job_id)
        with rpc_errors():
            response = await self.stub.DeleteJob(request, **self._call(timeout_s))
        return response.deleted_artifacts

    async def list_jobs(
        self,
        *,
        page_size: int = 50,
        page_token: str = "",
        state: reconstruction_pb2.JobState.ValueType = reconstruction_pb2.JOB_STATE_UNSPECIFIED,
        timeout_s: float | None = None,
    ) -> JobPage:
        """One page of jobs, newest first (``state``: only jobs in it; unset: all)."""
        with rpc_errors():
            response = await self.stub.ListJobs(
                list_request(page_size, page_token, state), **self._call(timeout_s)
            )
        return JobPage(list(response.jobs), response.next_page_token)

    async def iter_jobs(
        self,
        *,
        page_size: int = 50,
        state: reconstruction_pb2.JobState.ValueType = reconstruction_pb2.JOB_STATE_UNSPECIFIED,
    ) -> AsyncIterator[reconstruction_pb2.Job]:
        """Every job, newest first, fetching the pages as they are needed."""
        token = ""
        while True:
            page = await self.list_jobs(page_size=page_size, page_token=token, state=state)
            for job in page.jobs:
                yield job
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def profiles(self, *, timeout_s: float | None = None) -> list[reconstruction_pb2.Profile]:
        """The gateway's named output profiles ("standard" first)."""
        with rpc_errors():
            response = await self.stub.ListProfiles(
                reconstruction_pb2.ListProfilesRequest(), **self._call(timeout_s)
            )
        return list(response.profiles)
