"""Retention: finished jobs (record, events and files, the photo included) are deleted a fixed time after
their creation, by a background sweep."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.errors import JobError
from gateway.store import JobNotFound, JobStore

log = logging.getLogger(__name__)


def delete_expired(
    store: JobStore, delete: Callable[[str], object], retention_s: float, now_s: float, batch: int = 100
) -> int:
    """Delete (with ``delete(job_id)``) the finished jobs created more than ``retention_s`` before ``now_s``
    (seconds since the epoch); returns how many."""
    cutoff_ns = int((now_s - retention_s) * 1e9)
    deleted = 0
    while ids := store.finished_before(cutoff_ns, batch):
        for job_id in ids:
            try:
                delete(job_id)
                deleted += 1
            except (JobError, JobNotFound):  # deleted meanwhile by a client
                continue
        if len(ids) < batch:
            break
    return deleted


class RetentionSweeper:
    """A thread that calls ``sweep()`` (returning the number of jobs deleted) every ``retention_s / 10``
    seconds (1 s to 10 min) until :meth:`stop`."""

    def __init__(self, sweep: Callable[[], int], retention_s: float) -> None:
        self._sweep = sweep
        self.interval_s = min(600.0, max(1.0, retention_s / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-retention", daemon=True)

    def start(self) -> None:
        """Sweep now, then every :attr:`interval_s`."""
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop sweeping; waits up to ``timeout_s`` for a sweep in progress."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            try:
                count = self._sweep()
                if count:
                    log.info("expired jobs deleted", extra={"jobs": count})
            except Exception:  # keep sweeping; the next pass retries
                log.exception("retention sweep failed")
            if self._stop.wait(self.interval_s):
                return
