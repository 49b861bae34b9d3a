"""How a stage servicer is assembled: the RPC plumbing written once, the stage's own code as one handler.

A stage service declares its RPCs on a :class:`StageServicer` subclass::

    class Stage1Servicer(StageServicer, stage1_pb2_grpc.Stage1ServiceServicer):
        GetInfo = info_rpc(stage1_pb2.Stage1ServiceGetInfoResponse)
        GenerateViews = upload_rpc(UploadRpc(MULTIVIEW, ..., generate_views))

:func:`upload_rpc` reads the ``start`` message (:func:`~services.common.stage_io.read_start`), takes the
loaded backend (UNAVAILABLE while loading), hands a :class:`StageCall` to the handler and maps its failures
to rich statuses (:func:`~services.common.stage_runtime.guard`). The handler converts the request to the
backend's core inputs and options, runs them with :meth:`StageCall.run` (admission, progress messages,
cancellation) and sends the outputs with :meth:`StageCall.send_blobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from services.common import tracing
from services.common.conversions import progress_event
from services.common.stage_io import InvalidInput, read_start, send_blobs, upload_chunks
from services.common.stage_runtime import StageRuntime, guard
from services.common.worker import Heartbeat
from synchuman.progress_phases import HEARTBEAT_MESSAGE
from synchuman.stage_catalog import StageEntry
from synchuman.v1 import common_pb2

#: The longest job id a stage accepts in ``start``.
MAX_ID_CHARS = 128


class StageServicer:
    """Base of the stage servicers: holds the process's :class:`StageRuntime`."""

    def __init__(self, runtime: StageRuntime) -> None:
        self.runtime = runtime


@dataclass(frozen=True)
class UploadRpc:
    """A streaming stage RPC: ``stage`` is the stage's catalog entry (its name labels errors and logs, its
    ``synchuman.v1.Stage`` value tags the progress events); ``response_type`` is the response message;
    ``start_holds`` says what ``start`` must carry (error message); ``id_field`` names ``start``'s field
    holding the job id (``request_id`` in preprocess); ``handler`` does the stage's work on a
    :class:`StageCall`, yielding response messages."""

    stage: StageEntry
    response_type: Any
    start_holds: str
    id_field: str
    handler: Callable[[StageCall], Iterator[Any]]


@dataclass(frozen=True)
class StageCall:
    """One request being served: its RPC, runtime and context, the ``start`` payload, the rest of the upload
    stream and the loaded backend."""

    rpc: UploadRpc
    runtime: StageRuntime
    context: grpc.ServicerContext
    start: Any
    requests: Iterator[Any]
    backend: Any

    @property
    def job_id(self) -> str:
        """The id of the job the caller sent in ``start``."""
        return str(getattr(self.start, self.rpc.id_field))

    def chunks(self) -> Iterator[common_pb2.BlobChunk]:
        """The chunks of the rest of the upload (anything but ``chunk`` messages is an error)."""
        return upload_chunks(self.requests)

    def run(self, inputs: Any, options: Any) -> Generator[Any, None, Any]:
        """Run ``backend.run(inputs, options, ...)`` in a slot of the runtime, yielding a progress response
        per progress report (each phase traced as a span when tracing is on); return the backend's output (the
        call is aborted when it did not complete)."""

        phases = tracing.PhaseSpans(self.job_id, self.rpc.stage.name)  # children of the call's span

        def work(report: Callable[[Any], None], should_stop: Callable[[], bool]) -> Any:
            def relay(*event: Any) -> None:
                phases.entered(event[0])
                report(event)

            with phases:
                return self.backend.run(inputs, options, relay, should_stop)

        def to_message(event: tuple[str, int, int] | Heartbeat, elapsed_s: float) -> Any:
            message = ""
            if isinstance(event, Heartbeat):  # the last event again, the phase still running
                event, message = event.last, HEARTBEAT_MESSAGE
            return self.rpc.response_type(
                progress=progress_event(self.rpc.stage.stage, *event, elapsed_s=elapsed_s, message=message)
            )

        return (yield from self.runtime.run_job(self.context, self.job_id, work, to_message))

    def send_blobs(self, blobs: Iterable[tuple[str, str, bytes]]) -> Generator[Any, None, list[Any]]:
        """Yield every ``(name, media type, data)`` blob as response messages; return their headers."""
        return (yield from send_blobs(self.rpc.response_type, blobs))


def checked_id(start: Any, id_field: str) -> str:
    """``start``'s job id; :class:`InvalidInput` when over :data:`MAX_ID_CHARS` characters or not
    printable (it names the work in logs, metrics and errors)."""
    value = str(getattr(start, id_field))
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidInput(
            f"start.{id_field}", f"{id_field} must be at most {MAX_ID_CHARS} printable characters"
        )
    return value


def _serve(rpc: UploadRpc, runtime: StageRuntime, requests: Iterator[Any], context: Any) -> Iterator[Any]:
    start = read_start(requests, rpc.start_holds)
    tracing.annotate(checked_id(start, rpc.id_field), rpc.stage.name)
    yield from rpc.handler(StageCall(rpc, runtime, context, start, requests, runtime.backend(context)))


def upload_rpc(
    rpc: UploadRpc,
) -> Callable[[StageServicer, Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
    """The servicer method of a streaming stage RPC (see the module docstring)."""

    def method(
        servicer: StageServicer, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        return guard(rpc.stage.name, context, _serve(rpc, servicer.runtime, requests, context))

    return method


def info_rpc(response_type: Any) -> Callable[[StageServicer, Any, grpc.ServicerContext], Any]:
    """The servicer method of GetInfo: the backend's description and the process's limits in
    ``response_type.info`` (UNAVAILABLE while loading)."""

    def method(servicer: StageServicer, request: Any, context: grpc.ServicerContext) -> Any:
        return response_type(info=servicer.runtime.model_info(context))

    return method
