"""Clients of the three stage services as the gateway calls them: one streaming call per stage attempt.

Each call uploads the stage's inputs (a ``start`` message, then <= 1 MiB chunks), relays the stage's progress
events, reassembles the output blobs (checking size and SHA-256 against their headers) and returns them with
the stage's result message. A failure becomes :class:`StageFailure` carrying the stage's own
``google.rpc.Status`` and whether retrying may help. A :class:`CallHandle` lets another thread stop the call
in flight (job cancelled, gateway shutting down).

Targets are gRPC target strings: ``host:port``, ``dns:///host:port`` (every address the name resolves to) or
``ipv4:127.0.0.1:5001,127.0.0.1:5002``; calls are spread over all addresses round robin, and readiness asks
each address's health (:mod:`gateway.replicas`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gateway.replicas import ReplicaHealth
from services.common.auth import authorized_channel
from services.common.endpoints import STAGE_SERVICES
from services.common.stage_io import BlobAssembler, BlobMismatch, blob_header, upload_messages
from services.common.tls import ClientTls, open_channel
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

Progress = Callable[[common_pb2.ProgressEvent], None]


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
        retry_after = 0.0
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.ToTimedelta().total_seconds()
        return cls(status, code in RETRYABLE, retry_after)

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
        addresses = (targets.preprocess, targets.stage1, targets.stage2)
        self._channels = [open_channel(target, tls, CHANNEL_OPTIONS) for target in addresses]
        stubs = [authorized_channel(channel, token) for channel in self._channels]
        stages = STAGE_SERVICES.values()
        self._health = {stage: health_pb2_grpc.HealthStub(c) for stage, c in zip(stages, stubs, strict=True)}
        self._replicas = {
            stage: ReplicaHealth(target, token, tls, CHANNEL_OPTIONS)
            for stage, target in zip(stages, addresses, strict=True)
        }
        self._preprocess = preprocess_pb2_grpc.PreprocessServiceStub(stubs[0])
        self._stage1 = stage1_pb2_grpc.Stage1ServiceStub(stubs[1])
        self._stage2 = stage2_pb2_grpc.Stage2ServiceStub(stubs[2])
        #: GPU stage -> its ``GetInfo`` method and request (preprocess has none and runs on the CPU).
        self._get_info: dict[int, tuple[Any, Any]] = {
            common_pb2.STAGE_MULTIVIEW: (self._stage1.GetInfo, stage1_pb2.Stage1ServiceGetInfoRequest()),
            common_pb2.STAGE_RECONSTRUCTION: (self._stage2.GetInfo, stage2_pb2.Stage2ServiceGetInfoRequest()),
        }

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        for channel in self._channels:
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

    def _run(
        self,
        stage: str,
        method: Any,
        requests: Iterable[Any],
        on_progress: Progress,
        handle: CallHandle,
        timeout_s: float,
    ) -> StageOutput:
        assembler = BlobAssembler()
        result = None
        try:
            call = method(iter(requests), timeout=timeout_s)
            handle.attach(call)
            try:
                for message in call:
                    kind = message.WhichOneof("payload")
                    if kind == "progress":
                        on_progress(message.progress)
                    elif kind == "blob":
                        assembler.add_header(message.blob)
                    elif kind == "chunk":
                        assembler.add_chunk(message.chunk)
                    elif kind == "result":
                        result = message.result
            finally:
                handle.detach()
            if result is None:
                raise StageFailure.broken_stream(stage, "the stream ended without a result")
            return StageOutput(assembler.finish(), assembler.media_types, result)
        except grpc.RpcError as error:
            # The failed call is the exception, and its traceback holds grpc's frames that reference it: a
            # reference cycle that kept this call's inputs and partial outputs (~13 MB of views for stage 2)
            # alive until a rare full garbage collection; without the traceback they are freed at once.
            error.with_traceback(None)
            raise StageFailure.from_rpc_error(stage, error) from error
        except BlobMismatch as mismatch:
            raise StageFailure.broken_stream(stage, str(mismatch)) from mismatch

    def preprocess(
        self,
        job_id: str,
        image: bytes,
        options: common_pb2.PreprocessOptions,
        on_progress: Progress,
        handle: CallHandle,
    ) -> StageOutput:
        """PreprocessService.Preprocess of the photo; result: ``PreprocessResult``."""
        start = preprocess_pb2.PreprocessStart(
            request_id=job_id, options=options, image=blob_header("input", "application/octet-stream", image)
        )
        requests = upload_messages(preprocess_pb2.PreprocessRequest, start, {"input": image})
        timeout_s = self.deadline_s(common_pb2.STAGE_PREPROCESS, common_pb2.JobOptions(preprocess=options))
        return self._run("preprocess", self._preprocess.Preprocess, requests, on_progress, handle, timeout_s)

    def stage1(
        self,
        job_id: str,
        inputs: dict[str, bytes],
        options: common_pb2.MultiviewOptions,
        on_progress: Progress,
        handle: CallHandle,
    ) -> StageOutput:
        """Stage1Service.GenerateViews of "framed.png" + "conditioning.png"; result:
        ``GenerateViewsResult``.
        """
        start = stage1_pb2.GenerateViewsStart(
            job_id=job_id, options=options, inputs=[blob_header(n, "image/png", d) for n, d in inputs.items()]
        )
        requests = upload_messages(stage1_pb2.GenerateViewsRequest, start, inputs)
        timeout_s = self.deadline_s(common_pb2.STAGE_MULTIVIEW, common_pb2.JobOptions(multiview=options))
        return self._run("multiview", self._stage1.GenerateViews, requests, on_progress, handle, timeout_s)

    def stage2(
        self,
        job_id: str,
        structure: common_pb2.VoxelStructure,
        inputs: dict[str, bytes],
        options: common_pb2.ReconstructionOptions,
        on_progress: Progress,
        handle: CallHandle,
    ) -> StageOutput:
        """Stage2Service.Reconstruct of the voxel structure, conditioning image and views; result:
        ``ReconstructResult``.
        """
        start = stage2_pb2.ReconstructStart(
            job_id=job_id,
            options=options,
            structure=structure,
            inputs=[blob_header(n, "image/png", d) for n, d in inputs.items()],
        )
        requests = upload_messages(stage2_pb2.ReconstructRequest, start, inputs)
        timeout_s = self.deadline_s(
            common_pb2.STAGE_RECONSTRUCTION, common_pb2.JobOptions(reconstruction=options)
        )
        return self._run("reconstruction", self._stage2.Reconstruct, requests, on_progress, handle, timeout_s)
