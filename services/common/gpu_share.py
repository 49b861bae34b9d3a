"""Both GPU stages on one GPU: stage 1 goes first (the "GPU turn", shared by the two service processes).

On one GPU, stage 2's kernels slow a concurrent stage-1 request by about a fifth (bench/RESULTS.md, "Two
stages on one GPU"); CUDA stream priorities act only inside one process. The turn is a lock file
``<dir>/stage1-busy.lock`` in a folder both processes see (``--gpu-share-dir`` or
``$SYNCHUMAN_GPU_SHARE_DIR``, e.g. a tmpfs shared by the two containers):

- stage 1 holds a shared ``flock`` on it while it runs a request (:meth:`GpuTurn.hold`; shared, so several
  stage-1 requests or replicas may hold it at once). The kernel drops the lock when the holder dies, so a
  crashed stage 1 never blocks stage 2.
- stage 2, at each of its check points (the ``should_stop`` callback its pipeline calls between sampler
  steps, visibility batches, renders and bake steps), waits while the lock is held
  (:class:`YieldingStopCheck`): it probes with a non-blocking exclusive lock, released at once. The wait ends
  as soon as the request must stop (cancel, deadline, shutdown) and is bounded per request (``max_wait_s``).
- a burst must not starve stage 2 either (issue 25: a job's stage 2 waited 90.7 s while stage 1 ran the five
  jobs behind it). When a stage-2 request has to wait at a GPU check point, it *claims* the GPU: it holds a
  shared ``flock`` on ``<dir>/stage2-claim.lock`` until its GPU section ends (its next CPU phase, its end, or
  a stop), and stage 1 starts no *new* request while the claim is held (:meth:`TurnHoldingBackend.run`,
  bounded by ``STAGE1_MAX_WAIT_S``). So a GPU section of stage 2 yields to the stage-1 requests already
  running, never to a backlog: under a burst the two stages alternate on the GPU and older jobs finish first
  (a job at stage 2 was admitted before any job that is only starting stage 1), while a lone job's stage 1
  still goes first, and stage 2's CPU phases run on while stage 1 holds the GPU. A stage-2 request waits for
  stage 1 once: after that, stage-1 requests started during its CPU phases (younger jobs) no longer hold
  up its later GPU sections, which run beside them (:class:`YieldingStopCheck`).

Seconds yielded go to the Prometheus counter ``synchuman_gpu_share_yield_seconds_total`` (label ``stage``:
``stage2`` for the pauses at its check points, ``stage1`` for new requests held back by a claim).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from services.common.arguments import CommandLineError

log = logging.getLogger(__name__)

#: Environment default of ``--gpu-share-dir``.
ENV_DIR = "SYNCHUMAN_GPU_SHARE_DIR"
#: The lock file stage 1 holds while it works.
LOCK_NAME = "stage1-busy.lock"
#: The lock file a stage-2 request holds while it has claimed the GPU (stage 1 starts no new request).
CLAIM_NAME = "stage2-claim.lock"
#: Default bound of the seconds one stage-2 request may yield in total.
DEFAULT_MAX_WAIT_S = 60.0
#: Longest wait of a new stage-1 request for a stage-2 claim to end (a safety bound: a claim lasts one GPU
#: section of one stage-2 request, seconds on a real person).
STAGE1_MAX_WAIT_S = 60.0
#: How often a waiting stage 2 looks at the lock and at its stop check (seconds).
POLL_S = 0.02

YIELD_SECONDS = Counter(
    "synchuman_gpu_share_yield_seconds_total",
    "Seconds a stage paused for the other one on the shared GPU: stage 2 at its check points while stage 1 "
    "worked, stage 1 before a new request while a stage-2 request claimed the GPU.",
    ["stage"],
)
WAIT_BOUND_REACHED = Counter(
    "synchuman_gpu_share_wait_bound_reached_total",
    "Requests of the lower-priority stage that used up their --gpu-share-max-wait and then ran regardless.",
    ["stage"],
)


class GpuTurn:
    """The lock files in ``directory`` (created, with the folder, at first use): stage 1's turn and stage 2's
    claim."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self.claim_path = directory / CLAIM_NAME

    @staticmethod
    def _open(path: Path) -> int:
        """A new descriptor of ``path`` (read-only: a lock needs no write access), created if missing."""
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder does not exist yet
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)

    def open_lock_file(self) -> int:
        """A new descriptor of the turn's lock file."""
        return self._open(self.path)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Mark the priority stage busy for the ``with`` block (a shared lock; released on exit or death)."""
        fd = self.open_lock_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a stage-2 probe, which releases at once
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    @classmethod
    def _held(cls, path: Path) -> bool:
        """Does any process hold a lock on ``path`` now? (an exclusive probe, released at once)"""
        fd = cls._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def busy(self) -> bool:
        """Does any process hold the turn now?"""
        return self._held(self.path)

    def claim(self) -> int:
        """Claim the GPU for a stage-2 request (a shared lock: several stage-2 requests may claim at once);
        returns the descriptor; closing it (or the process's death) ends the claim."""
        fd = self._open(self.claim_path)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a stage-1 probe, which releases at once
        return fd

    def claimed(self) -> bool:
        """Does a stage-2 request claim the GPU now?"""
        return self._held(self.claim_path)

    @staticmethod
    def _wait(held: Callable[[], bool], should_stop: Callable[[], bool], max_wait_s: float) -> float:
        started = time.monotonic()
        while held() and not should_stop():
            waited = time.monotonic() - started
            if waited >= max_wait_s:
                return waited
            time.sleep(min(POLL_S, max_wait_s - waited))
        return time.monotonic() - started

    def wait_while_busy(self, should_stop: Callable[[], bool], max_wait_s: float) -> float:
        """Wait while the turn is held, at most ``max_wait_s`` seconds, returning early once ``should_stop()``
        is true; returns the seconds waited (0.0 when it was free)."""
        return self._wait(self.busy, should_stop, max_wait_s)

    def wait_while_claimed(self, should_stop: Callable[[], bool], max_wait_s: float) -> float:
        """Stage 1 before a new request: wait while a stage-2 request claims the GPU (at most ``max_wait_s``,
        returning early once ``should_stop()``); returns the seconds waited."""
        return self._wait(self.claimed, should_stop, max_wait_s)


class YieldingStopCheck:
    """The ``should_stop`` of one lower-priority request: before answering, waits while stage 1 holds the
    turn, unless :attr:`host_only` (the current phase runs on the CPU and may go on) or the request's wait
    bound is used up. ``yielded_s``: seconds waited so far.

    The first time a GPU section (the check points between two CPU phases) finds stage 1 busy, the request
    claims the GPU (:meth:`GpuTurn.claim`): stage 1 then starts no new request, so the section waits only for
    the stage-1 requests already running. The claim ends when a CPU phase starts (:attr:`host_only` set), when
    the request is to stop, at :meth:`release`, or when this object goes away.

    A request waits once (:attr:`has_yielded`): after the stage-1 requests running at its first wait have
    finished, its later GPU sections still claim the GPU when stage 1 is busy but run beside that stage-1
    request instead of waiting for it. Those requests started during one of its CPU phases, for younger jobs;
    waiting for each of them cost a job at the front of a burst a whole stage-1 request per GPU section
    (``bench/bench_gpu_share_sim.py``: 2.99 x a lone job's latency on the realistic mesh)."""

    def __init__(
        self, turn: GpuTurn, should_stop: Callable[[], bool], max_wait_s: float, stage: str = "stage2"
    ) -> None:
        self.turn = turn
        self.should_stop = should_stop
        self.max_wait_s = max_wait_s
        self.stage = stage
        self._host_only = False
        self._claim: int | None = None
        self.yielded_s = 0.0
        #: Set once a wait has ended with stage 1 free: the request has let the stage-1 requests that were
        #: running at its first wait finish, and it waits for no later (younger jobs') stage-1 request.
        self.has_yielded = False

    @property
    def host_only(self) -> bool:
        """The current phase runs on the CPU: no wait, and no claim (stage 1 may start requests)."""
        return self._host_only

    @host_only.setter
    def host_only(self, value: bool) -> None:
        self._host_only = value
        if value:
            self.release()

    @property
    def claiming(self) -> bool:
        """Does this request claim the GPU now?"""
        return self._claim is not None

    def release(self) -> None:
        """End this request's claim (if any)."""
        fd, self._claim = self._claim, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.release()

    def __call__(self) -> bool:
        if self.should_stop():
            self.release()
            return True
        left = self.max_wait_s - self.yielded_s
        if self.host_only or left <= 0:
            return False
        busy = self.turn.busy()
        if self._claim is None and busy:
            self._claim = self.turn.claim()  # no new stage-1 request until this GPU section ends
        if not busy or self.has_yielded:
            return self._stop_now()
        waited = self.turn.wait_while_busy(self.should_stop, left)
        self.has_yielded = not self.turn.busy()
        if waited > 0:
            self.yielded_s += waited
            YIELD_SECONDS.labels(self.stage).inc(waited)
            if self.yielded_s >= self.max_wait_s:
                WAIT_BOUND_REACHED.labels(self.stage).inc()
                log.warning(
                    "GPU-share wait bound reached; running on while stage 1 works",
                    extra={"stage": self.stage, "yielded_s": round(self.yielded_s, 3)},
                )
        return self._stop_now()

    def _stop_now(self) -> bool:
        if self.should_stop():
            self.release()
            return True
        return False


class TurnHoldingBackend:
    """A stage backend whose :meth:`run` holds the GPU turn (stage 1's, in the shared-GPU deployment); every
    other attribute is the wrapped backend's. A new request first waits (at most ``max_wait_s``) while a
    stage-2 request claims the GPU (see the module docstring)."""

    def __init__(self, backend: Any, turn: GpuTurn, max_wait_s: float = STAGE1_MAX_WAIT_S) -> None:
        self.backend = backend
        self.turn = turn
        self.max_wait_s = max_wait_s

    def run(self, *args: Any, **kwargs: Any) -> Any:
        should_stop = kwargs.get("should_stop", args[3] if len(args) > 3 else None) or (lambda: False)
        waited = self.turn.wait_while_claimed(should_stop, self.max_wait_s)
        if waited > 0:
            YIELD_SECONDS.labels("stage1").inc(waited)
            if waited >= self.max_wait_s:
                WAIT_BOUND_REACHED.labels("stage1").inc()
        with self.turn.hold():
            return self.backend.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def add_gpu_share_arguments(parser: argparse.ArgumentParser, priority: bool) -> None:
    """``--gpu-share-dir`` (both stages); ``--gpu-share-max-wait`` for the stage that yields
    (``priority=False``)."""
    role = (
        "this stage marks itself busy there while it runs a request, and stage 2 waits for it"
        if priority
        else "this stage pauses its GPU phases while stage 1 runs a request"
    )
    parser.add_argument(
        "--gpu-share-dir",
        default=os.environ.get(ENV_DIR, ""),
        metavar="DIR",
        help=f"folder shared with the other GPU stage when both run on one GPU: {role} (only on a CUDA "
        f"device; default ${ENV_DIR}; empty: off)",
    )
    if not priority:
        parser.add_argument(
            "--gpu-share-max-wait",
            type=float,
            default=DEFAULT_MAX_WAIT_S,
            metavar="SECONDS",
            help="longest total pause of one request for stage 1 (then it runs regardless; default "
            f"{DEFAULT_MAX_WAIT_S:.0f})",
        )


def gpu_turn_from_args(args: argparse.Namespace, device: str) -> GpuTurn | None:
    """The turn named by ``--gpu-share-dir`` when the stage runs on a CUDA ``device`` (None otherwise);
    :class:`~services.common.arguments.CommandLineError` when its lock file cannot be created."""
    if not args.gpu_share_dir:
        return None
    if not device.startswith("cuda"):
        log.info("--gpu-share-dir ignored: the stage runs on %s", device)
        return None
    turn = GpuTurn(Path(args.gpu_share_dir))
    try:
        os.close(turn.open_lock_file())
    except OSError as exc:
        raise CommandLineError(
            f"--gpu-share-dir {args.gpu_share_dir}: cannot create {LOCK_NAME} there ({exc.strerror}); give a "
            "folder this service may write, shared with the other GPU stage"
        ) from exc
    return turn
