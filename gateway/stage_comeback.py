"""Early retries for jobs whose stage was down: a job that failed with UNAVAILABLE is released to the store
with its back-off as ``run_after`` (see :mod:`gateway.job_loop`), and :class:`StageComeback` watches the stage
meanwhile; as soon as the stage's health turns SERVING after having been seen down, the jobs waiting for it
are made due at once, so a restarted service gets its retry when it is ready, not at the end of a long
back-off. One thread per stage watches while any job waits for it; a job nobody watches (this gateway
stopped) simply becomes due at its ``run_after``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: ``(stage, timeout_s, stop)`` -> whether the stage came back before the timeout (see
#: :meth:`gateway.stages.StageClients.wait_until_back`).
WaitUntilBack = Callable[[int, float, threading.Event], bool]


class StageComeback:
    """Calls ``make_due(job_ids)`` for the jobs :meth:`watch` ed on a stage once it is back; watching starts
    ``settle_s`` after a stage's first waiting job (the stage gets a moment to go down for good)."""

    def __init__(
        self, wait_until_back: WaitUntilBack, make_due: Callable[[list[str]], None], settle_s: float
    ) -> None:
        self._wait_until_back = wait_until_back
        self._make_due = make_due
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._waiting: dict[int, dict[str, float]] = {}  # stage -> job id -> monotonic time it is due anyway
        self._watchers: dict[int, threading.Thread] = {}
        self._stop = threading.Event()

    def watch(self, stage: int, job_id: str, due_in_s: float) -> None:
        """Make ``job_id`` due early if ``stage`` comes back within ``due_in_s`` seconds."""
        with self._lock:
            if self._stop.is_set():
                return
            self._waiting.setdefault(stage, {})[job_id] = time.monotonic() + due_in_s
            if stage not in self._watchers:
                watcher = threading.Thread(
                    target=self._watch, args=(stage,), name=f"gateway-stage-{stage}-comeback", daemon=True
                )
                self._watchers[stage] = watcher
                watcher.start()

    def stop(self, timeout_s: float) -> None:
        """Stop watching (the jobs keep their ``run_after``)."""
        with self._lock:
            self._stop.set()
            watchers = list(self._watchers.values())
        deadline = time.monotonic() + timeout_s
        for watcher in watchers:
            watcher.join(max(0.0, deadline - time.monotonic()))

    def _watch(self, stage: int) -> None:
        self._stop.wait(self._settle_s)
        while (timeout_s := self._longest_wait_s(stage)) is not None:
            if self._wait_until_back(stage, timeout_s, self._stop):
                with self._lock:
                    back = list(self._waiting.pop(stage, {}))
                log.info("stage back; its jobs are due now", extra={"stage": stage, "jobs": len(back)})
                self._make_due(back)

    def _longest_wait_s(self, stage: int) -> float | None:
        """Seconds until the last job waiting for ``stage`` is due anyway; None (and the watcher ends) when
        none waits any more or watching stopped."""
        with self._lock:
            now = time.monotonic()
            waiting = {job: due for job, due in self._waiting.get(stage, {}).items() if due > now}
            self._waiting[stage] = waiting
            if not waiting or self._stop.is_set():
                self._watchers.pop(stage, None)
                return None
            return max(waiting.values()) - now
