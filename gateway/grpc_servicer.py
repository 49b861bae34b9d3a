"""ReconstructionService over gRPC: a thin mapping of the RPCs onto :class:`gateway.manager.JobManager`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from gateway.errors import JobError
from gateway.manager import JobManager
from services.common.stage_io import InvalidInput, blob_chunks, read_start, receive_blobs, upload_chunks
from services.common.stage_runtime import abort, bad_request
from synchuman.v1 import reconstruction_pb2 as R
from synchuman.v1 import reconstruction_pb2_grpc


def _fail(context: grpc.ServicerContext, error: JobError) -> None:
    abort(context, error.code, error.message, *error.details)


class ReconstructionServicer(reconstruction_pb2_grpc.ReconstructionServiceServicer):
    """The public API of the gateway (see ``reconstruction.proto``)."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def SubmitJob(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> R.SubmitJobResponse:
        try:
            start = read_start(request_iterator, "options and the photo's header")
            if start.image.name != "input":
                raise InvalidInput(
                    "start.image.name", f"name the photo blob 'input', not {start.image.name!r}"
                )
            limit = self.manager.settings.max_upload_bytes
            blobs = receive_blobs(
                [start.image], upload_chunks(request_iterator), ("input",), limit, "start.image"
            )
            job, deduplicated = self.manager.submit(blobs["input"], start.options, start.idempotency_key)
        except InvalidInput as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), bad_request(exc.field, str(exc)))
        except JobError as error:
            _fail(context, error)
        return R.SubmitJobResponse(job=job, deduplicated=deduplicated)

    def WatchJob(
        self, request: R.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[R.WatchJobResponse]:
        try:
            yield from self.manager.watch(request.job_id, request.after_sequence, context.is_active)
        except JobError as error:
            _fail(context, error)

    def GetJob(self, request: R.GetJobRequest, context: grpc.ServicerContext) -> R.GetJobResponse:
        try:
            return R.GetJobResponse(job=self.manager.get(request.job_id))
        except JobError as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def ListJobs(self, request: R.ListJobsRequest, context: grpc.ServicerContext) -> R.ListJobsResponse:
        try:
            jobs, token = self.manager.list(request.page_size, request.page_token, request.state)
        except JobError as error:
            _fail(context, error)
        return R.ListJobsResponse(jobs=jobs, next_page_token=token)

    def CancelJob(self, request: R.CancelJobRequest, context: grpc.ServicerContext) -> R.CancelJobResponse:
        try:
            return R.CancelJobResponse(job=self.manager.cancel(request.job_id))
        except JobError as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def DeleteJob(self, request: R.DeleteJobRequest, context: grpc.ServicerContext) -> R.DeleteJobResponse:
        try:
            return R.DeleteJobResponse(deleted_artifacts=self.manager.delete(request.job_id))
        except JobError as error:
            _fail(context, error)
        raise AssertionError("unreachable")

    def GetArtifact(
        self, request: R.GetArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[R.GetArtifactResponse]:
        try:
            header, data = self.manager.artifact(request.job_id, request.name)
        except JobError as error:
            _fail(context, error)
        yield R.GetArtifactResponse(header=header)
        for chunk in blob_chunks(header.name, data):
            yield R.GetArtifactResponse(chunk=chunk)
