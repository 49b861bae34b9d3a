"""Clients of the three stage services as the gateway calls them: one streaming call per stage attempt.

Every stage of :mod:`synchuman.stage_catalog` is called the same way (:meth:`StageClients.call`; only its
``start`` message is its own). Each call uploads the stage's inputs (a ``start`` message, then <= 1 MiB
chunks, typed with the catalog's media types), relays the stage's progress events, reassembles the output
blobs (checking size and SHA-256 against their headers) and returns them with the stage's result message. A
failure becomes :class:`StageFailure` carrying the stage's own ``google.rpc.Status`` and whether retrying
may help. A :class:`CallHandle` lets another thread stop the call in flight (job cancelled, gateway shutting
down).

Targets are gRPC target strings: ``host:port``, ``dns:///host:port`` (every address the name resolves to) or
``ipv4:127.0.0.1:5001,127.0.0.1:5002``; calls are spread over all addresses round robin, and readiness asks
each address's health (:mod:`gateway.replicas`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gateway.replicas import ReplicaHealth
from services.common import tracing
from services.common.auth import authorized_channel
from services.common.rpc_status import retry_delay_s
from services.common.stage_io import BlobAssembler, BlobMismatch, blob_header, upload_messages
from services.common.tls import ClientTls, open_channel
from synchuman.stage_catalog import MULTIVIEW, PREPROCESS, RECONSTRUCTION, STAGES, StageEntry, media_type
from synchuman.v1 import (
    common_pb2,
    preprocess_pb2,
    preprocess_pb2_grpc,
    stage1_pb2,
    stage1_pb2_grpc,
    stage2_pb2,
    stage2_pb2_grpc,
)

#: Status codes after which the same stage call is worth sending again (the service restarts, is busy, or
#: the attempt ran out of time).
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

CHANNEL_OPTIONS = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

#: Where a stage call relays each ``ProgressEvent`` the stage sends (the job loop's event log).
EventSink = Callable[[common_pb2.ProgressEvent], None]


class StageFailure(Exception):
    """A stage call failed. ``status``: the stage's ``google.rpc.Status`` (code, message, details);
    ``retryable``: whether the same call may succeed later; ``retry_after_s``: the stage's RetryInfo, if any.
    """

    def __init__(self, status: status_pb2.Status, retryable: bool, retry_after_s: float = 0.0) -> None:
        super().__init__(status.message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"UNAVAILABLE"``."""
        return code_pb2.Code.Name(self.status.code)

    @classmethod
    def from_rpc_error(cls, stage: str, error: grpc.RpcError) -> StageFailure:
        """From a failed call: keeps the rich status the stage sent (or builds one from code + details)."""
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        code = error.code()  # type: ignore[attr-defined]
        if status is None:
            status = status_pb2.Status(code=code.value[0], message=str(error.details() or code.name))  # type: ignore[attr-defined]
        status.message = (
            f"{stage}: {status.message}" if not status.message.startswith(stage) else status.message
        )
        return cls(status, code in RETRYABLE, retry_delay_s(status))

    @classmethod
    def broken_stream(cls, stage: str, reason: str) -> StageFailure:
        """The stage's answer was incomplete or corrupted in transit (retryable)."""
        return cls(status_pb2.Status(code=code_pb2.DATA_LOSS, message=f"{stage}: {reason}"), True)


class CallHandle:
    """Lets another thread stop a job's stage call: :meth:`stop` records why and cancels the call in flight
    (and any call attached later).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: Any = None
        self.reason = ""
        self.stopped = threading.Event()

    def attach(self, call: Any) -> None:
        with self._lock:
            self._call = call
            if self.reason:
                call.cancel()

    def detach(self) -> None:
        with self._lock:
            self._call = None

    def stop(self, reason: str) -> None:
        """Stop the job's work; ``reason`` is ``"cancelled"`` or ``"shutdown"`` (the first reason wins)."""
        with self._lock:
            if not self.reason:
                self.reason = reason
            self.stopped.set()
            if self._call is not None:
                self._call.cancel()


@dataclass
class StageOutput:
    """What a stage call returned: the output blobs (name -> bytes, media types) and the result message."""

    blobs: dict[str, bytes]
    media: dict[str, str]
    result: Any


@dataclass(frozen=True)
class StageTargets:
    """gRPC targets of the three stage services."""

    preprocess: str
    stage1: str
    stage2: str


class StageClients:
    """One channel per stage service; ``call_timeout_s`` bounds every stage call (DEADLINE_EXCEEDED is
    retried like any other transient failure). ``token``: the stage services' bearer token (sent on every
    call; empty: none); ``tls``: TLS to the stages, with the gateway's client certificate for mTLS (None:
    plaintext).
    """

    def __init__(
        self,
        targets: StageTargets,
        call_timeout_s: float = 1800.0,
        token: str = "",
        tls: ClientTls | None = None,
    ) -> None:
        self.targets = targets
        self.call_timeout_s = call_timeout_s
        #: ``(stage, job options) -> seconds``: the deadline of one stage call (by default ``call_timeout_s``;
        #: the manager installs :meth:`gateway.stage_deadlines.StageDeadlines.deadline_s`).
        self.deadline_s: Callable[[int, common_pb2.JobOptions], float] = lambda stage, options: call_timeout_s
        addresses = {entry.stage: getattr(targets, entry.service) for entry in STAGES}
        self._channels = {stage: open_channel(to, tls, CHANNEL_OPTIONS) for stage, to in addresses.items()}
        stubs = {stage: authorized_channel(channel, token) for stage, channel in self._channels.items()}
        self._health = {stage: health_pb2_grpc.HealthStub(stub) for stage, stub in stubs.items()}
        self._replicas = {
            stage: ReplicaHealth(target, token, tls, CHANNEL_OPTIONS) for stage, target in addresses.items()
        }
        preprocess = preprocess_pb2_grpc.PreprocessServiceStub(stubs[PREPROCESS.stage])
        stage1 = stage1_pb2_grpc.Stage1ServiceStub(stubs[MULTIVIEW.stage])
        stage2 = stage2_pb2_grpc.Stage2ServiceStub(stubs[RECONSTRUCTION.stage])
        #: Stage -> its streaming RPC.
        self._rpcs = {
            PREPROCESS.stage: _StageRpc(
                preprocess.Preprocess, preprocess_pb2.PreprocessRequest, _preprocess_start
            ),
            MULTIVIEW.stage: _StageRpc(
                stage1.GenerateViews, stage1_pb2.GenerateViewsRequest, _multiview_start
            ),
            RECONSTRUCTION.stage: _StageRpc(
                stage2.Reconstruct, stage2_pb2.ReconstructRequest, _reconstruction_start
            ),
        }
        #: GPU stage -> its ``GetInfo`` method and request (preprocess has none and runs on the CPU).
        self._get_info: dict[int, tuple[Any, Any]] = {
            MULTIVIEW.stage: (stage1.GetInfo, stage1_pb2.Stage1ServiceGetInfoRequest()),
            RECONSTRUCTION.stage: (stage2.GetInfo, stage2_pb2.Stage2ServiceGetInfoRequest()),
        }

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        for channel in self._channels.values():
            channel.close()
        for replicas in self._replicas.values():
            replicas.close()

    def serving(self, stage: int, timeout_s: float = 1.0) -> bool | None:
        """The stage's overall gRPC health: True = SERVING, False = down or not serving, None = unknown (the
        service has no health endpoint). ``stage``: a ``synchuman.v1.Stage`` value."""
        stub = self._health[stage]
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as error:
            return None if error.code() == grpc.StatusCode.UNIMPLEMENTED else False  # type: ignore[attr-defined]
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def replicas_serving(self, stage: int, timeout_s: float = 1.0) -> dict[str, bool | None]:
        """The health of each replica of a stage (:meth:`serving`'s values), by address, when its target
        resolves to several (``dns:///stage1:50053`` scaled to two); else one entry, the target, answered
        through the stage channel as :meth:`serving` does."""
        replicas = self._replicas[stage]
        by_address = replicas.check(timeout_s)
        return {replicas.target: self.serving(stage, timeout_s)} if by_address is None else by_address

    def wait_until_back(
        self, stage: int, timeout_s: float, stop: threading.Event, poll_s: float = 0.25
    ) -> bool:
        """Wait up to ``timeout_s`` for a stage that failed with UNAVAILABLE, returning early (True) as soon
        as its health turns SERVING after having been seen down: a restarted service gets its retry when it is
        ready, not at the end of a long back-off. A stage that stays SERVING (it failed for another reason)
        gets the whole wait. False when the time ran out or ``stop`` was set."""
        deadline = time.monotonic() + timeout_s
        seen_down = False
        while (remaining := deadline - time.monotonic()) > 0:
            serving = self.serving(stage, timeout_s=min(1.0, remaining))
            if serving is False:
                seen_down = True
            elif serving and seen_down:
                return True
            if stop.wait(min(poll_s, max(0.0, deadline - time.monotonic()))):
                return False
        return False

    def info(self, stage: int, timeout_s: float = 2.0) -> common_pb2.ModelInfo | None:
        """What a GPU stage reports in ``GetInfo`` (device, concurrency, queue); None for preprocess (it has
        no ``GetInfo``) and when the stage cannot be asked now."""
        if stage not in self._get_info:
            return None
        get_info, request = self._get_info[stage]
        try:
            return get_info(request, timeout=timeout_s).info
        except grpc.RpcError:
            return None

    def device(self, stage: int, timeout_s: float = 2.0) -> str | None:
        """The device a GPU stage reports (``"cuda:0"``, ``"cpu"``), ``"cpu"`` for preprocess, None when
        the stage cannot be asked now."""
        if stage not in self._get_info:
            return "cpu"
        info = self.info(stage, timeout_s)
        return None if info is None else str(info.device)

    def capacity(self, stage: int, timeout_s: float = 2.0) -> int | None:
        """Requests a GPU stage takes before it refuses: running + queued of one replica (from ``GetInfo``)
        times the replicas that answer SERVING (at least one; a target that resolves to several addresses
        has several); None for preprocess and a stage that cannot be asked (not limited)."""
        info = self.info(stage, timeout_s)
        if info is None or info.concurrency == 0:
            return None
        serving = sum(1 for up in self.replicas_serving(stage, timeout_s).values() if up)
        return int(info.concurrency + info.max_queue) * max(1, serving)

    def call(
        self,
        entry: StageEntry,
        job_id: str,
        files: dict[str, bytes],
        options: common_pb2.JobOptions,
        on_event: EventSink,
        handle: CallHandle,
    ) -> StageOutput:
        """One call of ``entry``'s stage service for job ``job_id``: uploads ``files`` (its stored inputs, by
        name) with the stage's part of ``options``, relays its progress to ``on_event`` and returns its output
        blobs and result message; :class:`StageFailure` when the call fails. Traced as a child of the current
        context (the job's), which travels in the call's metadata."""
        rpc = self._rpcs[entry.stage]
        start, uploads = rpc.start(job_id, getattr(options, entry.name), files)
        requests = upload_messages(rpc.request_type, start, uploads)
        timeout_s = self.deadline_s(entry.stage, options)
        assembler = BlobAssembler()
        result = None
        try:
            with tracing.stage_call_span(job_id, entry.name) as trace_metadata:
                call = rpc.method(iter(requests), timeout=timeout_s, metadata=trace_metadata or None)
                handle.attach(call)
                try:
                    for message in call:
                        kind = message.WhichOneof("payload")
                        if kind == "progress":
                            on_event(message.progress)
                        elif kind == "blob":
                            assembler.add_header(message.blob)
                        elif kind == "chunk":
                            assembler.add_chunk(message.chunk)
                        elif kind == "result":
                            result = message.result
                finally:
                    handle.detach()
            if result is None:
                raise StageFailure.broken_stream(entry.name, "the stream ended without a result")
            return StageOutput(assembler.finish(), assembler.media_types, result)
        except grpc.RpcError as error:
            # The failed call is the exception, and its traceback holds grpc's frames that reference it: a
            # reference cycle that kept this call's inputs and partial outputs (~13 MB of views for stage 2)
            # alive until a rare full garbage collection; without the traceback they are freed at once.
            error.with_traceback(None)
            raise StageFailure.from_rpc_error(entry.name, error) from error
        except BlobMismatch as mismatch:
            raise StageFailure.broken_stream(entry.name, str(mismatch)) from mismatch


#: ``(job id, the stage's options, its stored inputs) -> (start message, files to upload)``.
StartBuilder = Callable[[str, Any, dict[str, bytes]], tuple[Any, dict[str, bytes]]]


@dataclass(frozen=True)
class _StageRpc:
    """The streaming RPC of one stage service: the stub's method, its request message and its ``start``."""

    method: Any
    request_type: Any
    start: StartBuilder


def _headers(files: dict[str, bytes]) -> list[common_pb2.BlobHeader]:
    return [blob_header(name, media_type(name), data) for name, data in files.items()]


def _preprocess_start(
    job_id: str, options: common_pb2.PreprocessOptions, files: dict[str, bytes]
) -> tuple[preprocess_pb2.PreprocessStart, dict[str, bytes]]:
    (image,) = _headers(files)
    return preprocess_pb2.PreprocessStart(request_id=job_id, options=options, image=image), files


def _multiview_start(
    job_id: str, options: common_pb2.MultiviewOptions, files: dict[str, bytes]
) -> tuple[stage1_pb2.GenerateViewsStart, dict[str, bytes]]:
    return stage1_pb2.GenerateViewsStart(job_id=job_id, options=options, inputs=_headers(files)), files


def _reconstruction_start(
    job_id: str, options: common_pb2.ReconstructionOptions, files: dict[str, bytes]
) -> tuple[stage2_pb2.ReconstructStart, dict[str, bytes]]:
    """Stage 1's voxel structure travels in ``start``; the conditioning crop and the views are uploaded."""
    uploads = dict(files)
    structure = common_pb2.VoxelStructure.FromString(uploads.pop(MULTIVIEW.result_file.name))
    start = stage2_pb2.ReconstructStart(
        job_id=job_id, options=options, structure=structure, inputs=_headers(uploads)
    )
    return start, uploads
