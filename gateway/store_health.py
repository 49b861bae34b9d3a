"""Readiness of the gateway follows its job store: a thread pings the store every few seconds and reports
each change of reachability, so the gateway's gRPC health says NOT_SERVING while the store cannot be
reached (a load balancer or Kubernetes then sends new calls to the other gateways) and SERVING again once
it answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gateway.store import JobStore, StoreUnavailable

log = logging.getLogger(__name__)


class StoreHealth:
    """Calls ``on_change(reachable)`` whenever ``store.ping()`` starts or stops failing; checks every
    ``interval_s`` seconds (plus the ping's own timeout) from :meth:`start` to :meth:`stop`."""

    def __init__(self, store: JobStore, on_change: Callable[[bool], None], interval_s: float = 2.0) -> None:
        self._store = store
        self._on_change = on_change
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-store-health", daemon=True)
        self.reachable = True

    def start(self) -> None:
        """Start checking (the store is assumed reachable: it just answered the gateway's start-up)."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop checking; no ``on_change`` call after this returns (unless a check outlives ``timeout_s``)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._store.ping()
                reachable, error = True, ""
            except (StoreUnavailable, OSError) as exc:
                reachable, error = False, str(exc)
            if reachable != self.reachable and not self._stop.is_set():
                self.reachable = reachable
                if reachable:
                    log.info("job store reachable again: SERVING")
                else:
                    log.error("job store unreachable: NOT_SERVING", extra={"error": error})
                self._on_change(reachable)
