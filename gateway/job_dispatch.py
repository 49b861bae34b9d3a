"""How a gateway's idle workers wait for jobs (used by :class:`gateway.job_loop.JobLoop`).

A worker looks in the store for a due job; finding none, it sleeps until it is woken or until the next
waiting job is due (at most the poll interval). Wake-ups come from a submission here, the store's
notifications (PostgreSQL ``LISTEN/NOTIFY``) and a stage coming back; one that arrives while a worker is
looking makes it look again, so none is lost.

A job submitted here while a worker is available is stored leased to this gateway and handed to a worker
directly (:meth:`WorkerDispatch.create`): the gateway that accepted a job starts it itself while it has room,
and the other gateways are notified only of the jobs it cannot start. (A worker that was already looking may
acquire another job meanwhile; the submitted one then waits, leased here and renewed by the heartbeat, for
the next worker here to finish.)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from gateway.store import Job

Taken = TypeVar("Taken")
#: ``()`` -> (the job acquired or None, the seconds to sleep when none was).
Look = Callable[[], tuple[Job | None, float]]


class WorkerDispatch:
    """The idle workers' meeting point, on the job loop's ``lock`` (the loop registers a job it hands out
    under it)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._ready = threading.Condition(lock)
        self.stopping = False  # read and written under the lock
        self._wakes = 0  # counts wake-ups: a worker that was looking while one came looks again
        self._available = 0  # workers in next(): looking, sleeping or held back
        self._held = 0  # workers held back while a submission counts on one of them
        self._promised = 0  # available workers counted on by submissions being stored
        self._handoff: deque[Job] = deque()  # jobs submitted here, leased to this gateway, for a worker

    def handed_off(self) -> set[str]:
        """Ids of the jobs waiting for the worker they were handed to (call under the lock)."""
        return {job.id for job in self._handoff}

    def stop(self) -> None:
        """No more jobs: every worker's :meth:`next` returns None (after the jobs handed off)."""
        with self._ready:
            self.stopping = True
            self._ready.notify_all()

    def wake(self) -> None:
        """A job may be available, or due sooner than the sleeping workers think: wake one."""
        with self._ready:
            self._wakes += 1
            self._ready.notify()

    def create(self, store: Callable[[bool], tuple[Job, bool]]) -> tuple[Job, bool]:
        """Store a submitted job with ``store(keep)`` (``keep``: lease it to this gateway, a worker is
        available): ``(job, created)``. A job kept and created is handed to a worker (a copy: the caller keeps
        its own); one not kept wakes a worker that may be about to sleep."""
        with self._ready:
            keep = not self.stopping and self._available > self._promised + len(self._handoff)
            self._promised += keep
        outcome: tuple[Job, bool] | None = None
        try:
            outcome = store(keep)
        finally:
            with self._ready:
                self._promised -= keep
                if keep and outcome is not None and outcome[1]:
                    self._handoff.append(Job.FromString(outcome[0].SerializeToString()))
                    self._ready.notify()
                if self._held and not self._promised:
                    self._ready.notify_all()  # the workers held back meanwhile
        stored, created = outcome
        if created and not keep:
            self.wake()
        return stored, created

    def next(self, look: Look, take: Callable[[Job], Taken]) -> Taken | None:
        """The next job for a worker, passed through ``take`` under the lock: a job handed to it, else one
        ``look()`` acquired; None once stopping. Sleeps between looks; while a submission counts on an
        available worker, the workers not looking yet wait for it instead of looking."""
        with self._ready:
            self._available += 1
        while True:
            with self._ready:
                if self._handoff or self.stopping:
                    self._available -= 1
                    return take(self._handoff.popleft()) if self._handoff else None
                if self._promised:
                    self._held += 1
                    self._ready.wait()
                    self._held -= 1
                    continue
                wakes = self._wakes
            found, sleep_s = look()
            with self._ready:
                if found is not None:
                    self._available -= 1
                    self._ready.notify()  # another sleeping worker looks for another due job
                    return take(found)
                if not (self.stopping or self._handoff or self._promised) and wakes == self._wakes:
                    self._ready.wait(sleep_s)
