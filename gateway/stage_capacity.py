"""Dispatch to a stage only when it has room, so jobs wait in the gateway, not in stage refusals.

A stage service takes ``concurrency`` requests at once plus ``max_queue`` waiting (its ``GetInfo`` says
both); past that it answers RESOURCE_EXHAUSTED. Without a limit here, a burst of jobs is sent at once and
turned into a storm of refusals and back-off retries (issue 17, finding 8: 70 retries for 10 jobs). A
:class:`StageCapacity` slot is taken before every stage call and given back when it ends: a worker whose stage
is full waits here (the job stays queued in the gateway) until a call of that stage ends. The gateway's own
pending limit (``max_pending_jobs``) remains the only place a client is told to come back later.

A stage that cannot be asked (down, no ``GetInfo``) is not limited: its calls fail and are retried as before.
Replicas behind one target (a name that resolves to several addresses, e.g. a scaled compose service or a
headless Kubernetes Service) add up: the limit is one replica's capacity times the replicas answering SERVING,
re-read every :data:`CAPACITY_CACHE_S`, so the gateway uses a scale-up (and the stages' queue depth, which
their autoscaler reads, can rise). Calls are spread round robin, not by load, so an uneven spread can still
meet a refusal, retried as any other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: How long a stage's capacity answer stays cached (seconds).
CAPACITY_CACHE_S = 30.0


class StageCapacity:
    """Per-stage call slots; ``capacity_of(stage)`` -> requests the stage takes at once plus its queue, or
    None when it cannot be asked."""

    def __init__(self, capacity_of: Callable[[int], int | None], poll_s: float = 0.5) -> None:
        self._capacity_of = capacity_of
        self._poll_s = poll_s
        self._changed = threading.Condition()
        self._in_flight: dict[int, int] = {}
        self._known: dict[int, tuple[float, int | None]] = {}

    def capacity(self, stage: int) -> int | None:
        """The stage's capacity (cached for :data:`CAPACITY_CACHE_S`; an unknown answer is not cached)."""
        now = time.monotonic()
        with self._changed:
            cached = self._known.get(stage)
        if cached is not None and now - cached[0] < CAPACITY_CACHE_S:
            return cached[1]
        capacity = self._capacity_of(stage)
        if capacity is not None:
            with self._changed:
                self._known[stage] = (now, capacity)
        return capacity

    def in_flight(self, stage: int) -> int:
        """Calls of ``stage`` this gateway has in flight."""
        with self._changed:
            return self._in_flight.get(stage, 0)

    @contextmanager
    def slot(self, stage: int, stopped: threading.Event) -> Iterator[None]:
        """Hold one call slot of ``stage`` for the ``with`` body, waiting while the stage is full; stops
        waiting once ``stopped`` is set (the body then sees the stop)."""
        while True:
            capacity = self.capacity(stage)
            with self._changed:
                if capacity is None or self._in_flight.get(stage, 0) < capacity or stopped.is_set():
                    self._in_flight[stage] = self._in_flight.get(stage, 0) + 1
                    break
                self._changed.wait(self._poll_s)
        try:
            yield
        finally:
            with self._changed:
                self._in_flight[stage] -= 1
                self._changed.notify_all()
