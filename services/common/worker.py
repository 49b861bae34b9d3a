"""Run a blocking pipeline call in a worker thread and stream its progress back to the gRPC handler.

The handler thread stays responsive while the pipeline runs: it relays progress events from a queue (and
repeats the last one as a heartbeat when the work reported nothing for a while), and it notices a cancelled
call, a passed deadline or a server shutdown within ``poll_s``. The pipeline is asked to stop through its
``should_stop`` callback (checked between steps); the handler then waits for the worker to really finish, so
the GPU is idle and its cached memory is released before the next request takes the slot.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, NamedTuple, TypeVar

import grpc

from synchuman.progress_phases import HEARTBEAT_S

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")

ProgressSink = Callable[[Any], None]
StopCheck = Callable[[], bool]


class StopReason(enum.Enum):
    """Why work was stopped before it finished."""

    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    SHUTDOWN = "shutdown"


class WorkStopped(Exception):
    """The work stopped early; ``reason`` says why."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"work stopped: {reason.value}")
        self.reason = reason


class ShutdownState:
    """Two-phase shutdown of a stage service.

    ``draining``: no new work starts; queued requests are rejected (UNAVAILABLE). ``aborting``: running work
    is stopped too (set after the grace period for in-flight work has passed).
    """

    def __init__(self) -> None:
        self.draining = threading.Event()
        self.aborting = threading.Event()


class StopSignal:
    """Answers "should this request stop, and why" from its RPC context and the server's shutdown events."""

    def __init__(self, context: grpc.ServicerContext, *events: threading.Event) -> None:
        self._context = context
        self._events = events
        self._abandoned = threading.Event()

    def abandon(self) -> None:
        """The response stream was closed early (the client is gone): stop as for a cancelled call."""
        self._abandoned.set()

    def reason(self) -> StopReason | None:
        """The reason to stop, or None to go on."""
        if self._abandoned.is_set():
            return StopReason.CANCELLED
        if not self._context.is_active():
            return StopReason.DEADLINE if self._context.time_remaining() <= 0 else StopReason.CANCELLED
        if any(event.is_set() for event in self._events):
            return StopReason.SHUTDOWN
        return None

    def __call__(self) -> bool:
        return self.reason() is not None

    def on_rpc_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the RPC terminates (cancel, deadline or completion)."""
        self._context.add_callback(callback)


def release_heap() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; a no-op elsewhere). A request
    allocates and frees hundreds of MB of image and mesh buffers across threads; without a trim the freed
    memory stays mapped in the allocator's arenas and the process's RSS climbs from request to request."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def free_accelerator_memory() -> None:
    """Collect garbage and return cached CUDA memory to the driver (no-op without torch or CUDA)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Outcome(Generic[R]):
    __slots__ = ("value", "error")

    def __init__(self, value: R | None = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


_WAKE = object()


class Heartbeat(NamedTuple):
    """Yielded by :func:`stream_work` when the work reported nothing for a while: ``last`` is its last
    report (the phase still running)."""

    last: Any


def stream_work(
    work: Callable[[ProgressSink, StopCheck], R],
    stop: StopSignal,
    name: str = "stage-work",
    poll_s: float = 0.2,
    heartbeat_s: float = HEARTBEAT_S,
) -> Generator[Any, None, R]:
    """Run ``work(report, should_stop)`` in a worker thread; yield what it reports; return its result.

    While the work runs, ``Heartbeat(last report)`` is yielded whenever ``heartbeat_s`` passed without a
    report (the phase is still running; phases without steps, such as one long native call, send nothing
    themselves).

    Use as ``result = yield from stream_work(...)`` inside a streaming handler. Raises :class:`WorkStopped`
    (after the worker has finished and memory was freed) when the request was cancelled, passed its deadline
    or the server shut down before the work completed; re-raises the work's own exception otherwise.
    """
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def target() -> None:
        try:
            events.put(_Outcome(value=work(events.put, stop)))
        except BaseException as exc:  # relayed to the handler thread
            events.put(_Outcome(error=exc))

    stop.on_rpc_end(lambda: events.put(_WAKE))
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    stopping: StopReason | None = None
    last_item: Any = _WAKE
    last_sent = time.monotonic()
    try:
        while True:
            try:
                item = events.get(timeout=poll_s)
            except queue.Empty:
                item = _WAKE
            if isinstance(item, _Outcome):
                break
            if stopping is None:
                stopping = stop.reason()
                if stopping is not None:
                    log.info("stopping work", extra={"work": name, "reason": stopping.value})
            if item is _WAKE and last_item is not _WAKE and time.monotonic() - last_sent >= heartbeat_s:
                item = Heartbeat(last_item)
            if item is not _WAKE and stopping is None:
                last_sent = time.monotonic()
                if not isinstance(item, Heartbeat):
                    last_item = item
                yield item
    finally:
        if thread.is_alive():  # the consumer closed the stream early: stop the work and wait for it
            stop.abandon()
            thread.join()
            free_accelerator_memory()
    thread.join()
    release_heap()
    outcome, item = item, None
    if outcome.error is None:
        return outcome.value  # type: ignore[return-value]
    error, outcome = outcome.error, None
    try:
        reason = stopping or stop.reason()
        if reason is not None:
            free_accelerator_memory()
            raise WorkStopped(reason) from error
        raise error
    finally:
        # The raised exception's traceback holds this frame: a local naming the exception would make a
        # reference cycle that keeps the failed work's frames (and their GPU tensors) alive until a full
        # garbage collection.
        error = None
