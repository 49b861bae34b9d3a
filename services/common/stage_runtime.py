"""What the GPU stage services share: admission, running a job, mapping failures to rich errors, shutdown.

A stage handler reads its upload, then calls :meth:`StageRuntime.run_job`, which

1. takes a GPU slot (FIFO queue; RESOURCE_EXHAUSTED + RetryInfo when the queue is full, UNAVAILABLE when the
   server is draining),
2. runs the blocking pipeline call in a worker thread and relays its progress as response messages,
3. stops the work between steps when the client cancels, the deadline passes or the server shuts down, frees
   GPU memory, and fails the call with the matching status.

Shutdown (:meth:`StageRuntime.drain`): queued requests are rejected at once with UNAVAILABLE (retry
elsewhere or later); running work gets ``grace_s`` to finish, then it is stopped and rejected with
UNAVAILABLE, so a client always learns explicitly what happened to its request. Stage services keep no state
between requests: a crashed stage loses nothing that the caller cannot send again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from services.common.gpu_queue import QueueFull, SlotLimiter, StoppedWhileQueued
from services.common.rpc_status import Aborted, abort, bad_request, error_info, retry_info
from services.common.worker import (
    ShutdownState,
    StopReason,
    StopSignal,
    WorkStopped,
    free_accelerator_memory,
    stream_work,
)
from synchuman.v1 import common_pb2

log = logging.getLogger(__name__)

R = TypeVar("R")


class OutputRejected(Exception):
    """The finished output is useless (e.g. an empty mesh): FAILED_PRECONDITION with ``reason`` as
    ErrorInfo.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StageLimits:
    """Per-process limits of a stage service."""

    concurrency: int = 1
    max_queue: int = 4
    grace_s: float = 30.0
    typical_job_s: float = 30.0


def guard(
    name: str, context: grpc.ServicerContext, handler: Generator[Any, None, None]
) -> Generator[Any, None, None]:
    """Run a streaming handler; turn input errors into INVALID_ARGUMENT and anything unexpected into
    INTERNAL (a call already failed with :func:`~services.common.rpc_status.abort` passes through).
    """
    try:
        yield from handler
    except Aborted:
        raise
    except OutputRejected as exc:
        abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"{name}: {exc}", error_info(exc.reason))
    except Exception as exc:
        field = getattr(exc, "field", None)
        if isinstance(exc, ValueError) and isinstance(field, str):  # input errors name the offending field
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {exc}", bad_request(field, str(exc)))
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            free_accelerator_memory()
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name}: the accelerator ran out of memory ({exc}); retry later or with smaller options",
                retry_info(5.0),
                error_info("OUT_OF_MEMORY"),
            )
        log.exception("request failed", extra={"stage": name})
        abort(
            context,
            grpc.StatusCode.INTERNAL,
            f"{name} failed unexpectedly: {type(exc).__name__}: {exc}; the request can be sent again, "
            "and the server log has the traceback",
            error_info("INTERNAL_ERROR", exception=type(exc).__name__),
        )


class StageRuntime:
    """Admission, execution and shutdown of one stage service process."""

    def __init__(self, name: str, limits: StageLimits) -> None:
        self.name = name
        self.limits = limits
        self.limiter = SlotLimiter(limits.concurrency, limits.max_queue, limits.typical_job_s)
        self.shutdown = ShutdownState()
        self._backend: Any = None

    def attach(self, backend: Any) -> None:
        """Make the loaded and warmed-up backend available to requests."""
        self._backend = backend

    def backend(self, context: grpc.ServicerContext) -> Any:
        """The backend, or UNAVAILABLE (retry shortly) while checkpoints are still loading."""
        if self._backend is None:
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{self.name} is still loading its checkpoints; retry in a few seconds",
                retry_info(5.0),
                error_info("NOT_READY"),
            )
        return self._backend

    def model_info(self, context: grpc.ServicerContext) -> common_pb2.ModelInfo:
        """GetInfo's answer: the backend's :class:`~synchuman.pipelines.info.PipelineInfo` plus this process's
        limits (UNAVAILABLE while loading)."""
        info = self.backend(context).info()
        return common_pb2.ModelInfo(
            checkpoint_dir=info.checkpoint_dir,
            weights=info.weights,
            device=info.device,
            dtype=info.dtype,
            concurrency=self.limits.concurrency,
            max_queue=self.limits.max_queue,
        )

    def run_job(
        self,
        context: grpc.ServicerContext,
        job_id: str,
        work: Callable[[Callable[[Any], None], Callable[[], bool]], R],
        to_message: Callable[[Any, float], Any],
    ) -> Generator[Any, None, R]:
        """Run ``work(report, should_stop)`` in a slot; yield ``to_message(p, elapsed_s)`` per report, where
        ``elapsed_s`` counts seconds since the slot was taken (time in the queue excluded); return its result.

        Never returns normally when the work did not complete: the call is aborted with the matching status.
        """
        if self.shutdown.draining.is_set():
            self._abort_shutdown(context)
        queued = StopSignal(context, self.shutdown.draining)
        try:
            with self.limiter.slot(queued):
                if self.shutdown.draining.is_set():
                    self._abort_shutdown(context)
                started = time.monotonic()
                log.info("job started", extra={"stage": self.name, "job_id": job_id})
                running = StopSignal(context, self.shutdown.aborting)
                try:
                    result = yield from _map_stream(
                        stream_work(work, running, name=f"{self.name}:{job_id}"),
                        lambda item: to_message(item, time.monotonic() - started),
                    )
                except WorkStopped as stopped:
                    log.info(
                        "job stopped",
                        extra={"stage": self.name, "job_id": job_id, "reason": stopped.reason.value},
                    )
                    self._abort_stopped(context, stopped.reason)
                log.info(
                    "job finished",
                    extra={
                        "stage": self.name,
                        "job_id": job_id,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
                return result
        except QueueFull as full:
            abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.name}: {full}",
                retry_info(full.retry_after_s),
                error_info("QUEUE_FULL", running=str(full.running), waiting=str(full.waiting)),
            )
        except StoppedWhileQueued:
            self._abort_stopped(context, queued.reason() or StopReason.CANCELLED)

    def close_backend(self) -> None:
        """Close the backend (frees its accelerator memory); call once drained."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
            free_accelerator_memory()

    def _abort_shutdown(self, context: grpc.ServicerContext) -> NoReturn:
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"{self.name} is shutting down and did not finish this request; send it again (another replica "
            "or this one after its restart will run it)",
            retry_info(1.0),
            error_info("SHUTTING_DOWN"),
        )

    def _abort_stopped(self, context: grpc.ServicerContext, reason: StopReason) -> NoReturn:
        if reason is StopReason.SHUTDOWN:
            self._abort_shutdown(context)
        if reason is StopReason.DEADLINE:
            abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.name}: the deadline passed; work stopped"
            )
        abort(context, grpc.StatusCode.CANCELLED, f"{self.name}: the call was cancelled; work stopped")

    def drain(self, on_running_stopped: Callable[[], None] | None = None) -> None:
        """Shut down: reject queued work now, give running work ``grace_s`` to finish, then stop it.

        Blocks until no request holds a slot (or one more second after the abort signal).
        """
        self.shutdown.draining.set()
        deadline = time.monotonic() + self.limits.grace_s
        while self.limiter.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.limiter.running:
            log.warning(
                "grace period over; stopping running work",
                extra={"stage": self.name, "running": self.limiter.running},
            )
            self.shutdown.aborting.set()
            stop_wait = time.monotonic() + 10.0
            while self.limiter.running and time.monotonic() < stop_wait:
                time.sleep(0.05)
            if on_running_stopped is not None:
                on_running_stopped()


def _map_stream(gen: Generator[Any, None, R], fn: Callable[[Any], Any]) -> Generator[Any, None, R]:
    """Yield ``fn(item)`` for every item of ``gen`` and return ``gen``'s return value."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as done:
                return done.value
            yield fn(item)
    finally:
        gen.close()
