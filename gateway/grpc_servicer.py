"""ReconstructionService over gRPC: a thin mapping of the RPCs onto :class:`gateway.manager.JobManager`, as
the caller's tenant sees it (:mod:`gateway.tenants`: every call but health and reflection authenticates its
``authorization: Bearer`` metadata, the shared token or an API key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from gateway.artifacts import ArtifactCorrupted
from gateway.errors import JobError
from gateway.manager import JobManager
from gateway.store import StoreError
from gateway.store_errors import REQUEST_ERRORS, as_job_error
from gateway.tenants import TenantAccess, TenantJobs
from services.common.auth import HEADER
from services.common.rpc_status import abort, bad_request
from services.common.stage_io import InvalidInput, piece_chunks, read_start, receive_blobs, upload_chunks
from synchuman.v1 import reconstruction_pb2, reconstruction_pb2_grpc


def _fail(context: grpc.ServicerContext, error: JobError | StoreError) -> None:
    error = as_job_error(error)
    abort(context, error.code, error.message, *error.details)


class ReconstructionServicer(reconstruction_pb2_grpc.ReconstructionServiceServicer):
    """The public API of the gateway (see ``reconstruction.proto``)."""

    def __init__(self, manager: JobManager, auth_token: str = "") -> None:
        self.manager = manager
        self.access = TenantAccess(manager, auth_token)

    def _jobs(self, context: grpc.ServicerContext) -> TenantJobs:
        """The jobs of the call's tenant (UNAUTHENTICATED: a :class:`JobError`)."""
        sent = next((v for k, v in context.invocation_metadata() or () if k.lower() == HEADER), "")
        return self.access.jobs(sent if isinstance(sent, str) else sent.decode(errors="replace"))

    def SubmitJob(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> reconstruction_pb2.SubmitJobResponse:
        try:
            jobs = self._jobs(context)  # before the upload is read
            start = read_start(request_iterator, "options and the photo's header")
            if start.image.name != "input":
                raise InvalidInput(
                    "start.image.name", f"name the photo blob 'input', not {start.image.name!r}"
                )
            limit = self.manager.settings.max_upload_bytes
            blobs = receive_blobs(
                [start.image], upload_chunks(request_iterator), ("input",), limit, "start.image"
            )
            job, deduplicated = jobs.submit(
                blobs["input"], start.options, start.idempotency_key, start.callback_url
            )
        except InvalidInput as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), bad_request(exc.field, str(exc)))
        except REQUEST_ERRORS as error:
            _fail(context, error)
        return reconstruction_pb2.SubmitJobResponse(job=job, deduplicated=deduplicated)

    def WatchJob(
        self, request: reconstruction_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[reconstruction_pb2.WatchJobResponse]:
        try:
            yield from self._jobs(context).watch(request.job_id, request.after_sequence, context.is_active)
        except REQUEST_ERRORS as error:
            _fail(context, error)

    def GetJob(
        self, request: reconstruction_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> reconstruction_pb2.GetJobResponse:
        try:
            return reconstruction_pb2.GetJobResponse(job=self._jobs(context).get(request.job_id))
        except REQUEST_ERRORS as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def ListJobs(
        self, request: reconstruction_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> reconstruction_pb2.ListJobsResponse:
        try:
            jobs, token = self._jobs(context).list(request.page_size, request.page_token, request.state)
        except REQUEST_ERRORS as error:
            _fail(context, error)
        return reconstruction_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    def CancelJob(
        self, request: reconstruction_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> reconstruction_pb2.CancelJobResponse:
        try:
            return reconstruction_pb2.CancelJobResponse(job=self._jobs(context).cancel(request.job_id))
        except REQUEST_ERRORS as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def DeleteJob(
        self, request: reconstruction_pb2.DeleteJobRequest, context: grpc.ServicerContext
    ) -> reconstruction_pb2.DeleteJobResponse:
        try:
            removed = self._jobs(context).delete(request.job_id)
            return reconstruction_pb2.DeleteJobResponse(deleted_artifacts=removed)
        except REQUEST_ERRORS as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def ListProfiles(
        self, request: reconstruction_pb2.ListProfilesRequest, context: grpc.ServicerContext
    ) -> reconstruction_pb2.ListProfilesResponse:
        try:
            return self._jobs(context).profiles()
        except REQUEST_ERRORS as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def GetArtifact(
        self, request: reconstruction_pb2.GetArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[reconstruction_pb2.GetArtifactResponse]:
        try:
            header, pieces = self._jobs(context).artifact_pieces(request.job_id, request.name)
        except REQUEST_ERRORS as error:
            _fail(context, error)
        yield reconstruction_pb2.GetArtifactResponse(header=header)
        try:
            # read from the artifact store as sent: the file is never held whole
            for chunk in piece_chunks(header.name, pieces):
                yield reconstruction_pb2.GetArtifactResponse(chunk=chunk)
        except ArtifactCorrupted as exc:
            abort(context, grpc.StatusCode.DATA_LOSS, f"{exc}: the stored file is damaged; run the job again")
