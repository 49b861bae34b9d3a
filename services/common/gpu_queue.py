"""Admission control for GPU stage services: N requests work at once, a bounded FIFO queue waits behind them.

A request takes a slot with :meth:`SlotLimiter.slot`. When every slot is busy it waits in the queue (first
come, first served); when the queue is full it is refused at once with :class:`QueueFull`, which carries an
estimate of when to retry (from the measured duration of recent jobs). While waiting, the caller's
``should_stop`` is polled so a cancelled or expired request leaves the queue without ever touching the GPU.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full; ``retry_after_s`` estimates when a place frees up."""

    def __init__(self, running: int, waiting: int, retry_after_s: float) -> None:
        super().__init__(
            f"the server is at capacity ({running} running, {waiting} waiting); "
            f"retry in about {retry_after_s:.0f} s"
        )
        self.running = running
        self.waiting = waiting
        self.retry_after_s = retry_after_s


class StoppedWhileQueued(Exception):
    """``should_stop`` became true while the request waited for a slot."""


class SlotLimiter:
    """``concurrency`` slots plus a FIFO queue of at most ``max_queue`` waiting requests.

    ``typical_job_s`` seeds the retry estimate until real jobs have been timed (exponential moving average).
    """

    def __init__(self, concurrency: int = 1, max_queue: int = 4, typical_job_s: float = 30.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.concurrency = concurrency
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: collections.deque[int] = collections.deque()
        self._tickets = itertools.count()
        self._job_s = typical_job_s

    @property
    def running(self) -> int:
        """Requests holding a slot now."""
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        """Requests waiting in the queue now."""
        with self._cond:
            return len(self._waiting)

    def retry_after_s(self) -> float:
        """Seconds until a queue place is expected to free up (at least 1)."""
        with self._cond:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> float:
        return max(1.0, self._job_s * (len(self._waiting) + 1) / self.concurrency)

    @contextlib.contextmanager
    def slot(self, should_stop: Callable[[], bool], poll_s: float = 0.1) -> Iterator[None]:
        """Hold a slot for the ``with`` body.

        Raises :class:`QueueFull` at once when the queue is full, :class:`StoppedWhileQueued` when
        ``should_stop()`` turns true while waiting (checked every ``poll_s`` seconds).
        """
        with self._cond:
            if self._running >= self.concurrency and len(self._waiting) >= self.max_queue:
                raise QueueFull(self._running, len(self._waiting), self._retry_after_locked())
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            try:
                while not (self._waiting[0] == ticket and self._running < self.concurrency):
                    if should_stop():
                        raise StoppedWhileQueued()
                    self._cond.wait(poll_s)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
            self._running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._cond:
                self._running -= 1
                self._job_s = 0.7 * self._job_s + 0.3 * elapsed
                self._cond.notify_all()
