"""Webhooks: when a job that was submitted with a ``callback_url`` ends (SUCCEEDED, FAILED or CANCELLED), the
gateway POSTs one event to that URL, signed per the Standard Webhooks specification.

The event (body, JSON): ``{"type": "job.succeeded" | "job.failed" | "job.cancelled", "timestamp": end time
(RFC 3339), "data": {"job": <the final Job, as GET /v1/jobs/{id} shows it>}}``; headers ``webhook-id`` (the
event id, the same on every attempt: receivers deduplicate by it), ``webhook-timestamp`` (seconds since the
epoch, of the attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with
the deployment's secret, computed by the ``standardwebhooks`` library; receivers verify it with the same
library or any Standard Webhooks implementation).

Delivery: the event is queued in the job store with the job's end (:mod:`gateway.webhooks_store`); the
:class:`WebhookDispatcher` of every gateway of the store claims due events, sends them
(:mod:`gateway.webhooks_send`) to addresses the SSRF policy allows (:mod:`gateway.webhooks_policy`, checked
again at every attempt) and records each attempt on the delivery, which ``GetJob`` shows. A 2xx answer
delivers; anything else is retried on the :class:`WebhookRetry` schedule for at least 24 hours, then the
delivery is abandoned. A gateway that dies mid-attempt leaves the event to the next claim once its lease
expires (at least once).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format, timestamp_pb2
from standardwebhooks import Webhook

from gateway.metrics import WEBHOOK_BACKLOG, WEBHOOK_DELIVERIES
from gateway.store import Job, StoreUnavailable
from gateway.webhooks_policy import WebhookPolicy, WebhookRefused
from gateway.webhooks_send import AttemptResult, post
from gateway.webhooks_store import DueDelivery, WebhookOutbox
from synchuman.v1 import reconstruction_pb2

log = logging.getLogger(__name__)

#: Seconds between two sweeps of the finished deliveries of deleted jobs.
SWEEP_S = 600.0
#: Shortest secret, in bytes (the Standard Webhooks specification: 24 to 64).
MIN_SECRET_BYTES = 24
SECRET_HINT = (
    "generate one with: python -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32))"
    '.decode())"'
)


def check_secret(secret: str) -> str:
    """``secret`` when it is a Standard Webhooks secret (``whsec_`` + base64 of 24 to 64 random bytes);
    ValueError naming what is wrong otherwise."""
    try:
        key = base64.b64decode(secret.strip().removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the webhook secret is not whsec_ followed by base64; {SECRET_HINT}") from None
    if not MIN_SECRET_BYTES <= len(key) <= 64:
        raise ValueError(
            f"the webhook secret has {len(key)} bytes; it needs {MIN_SECRET_BYTES} to 64; {SECRET_HINT}"
        )
    return secret.strip()


def read_secret(secret: str, secret_file: str) -> str:
    """The secret given directly or in a file (its first line); "" when neither is given. ValueError when
    both are, or the file cannot be read, or the secret is malformed (:func:`check_secret`)."""
    if secret and secret_file:
        raise ValueError("give the webhook secret either directly or as a file, not both")
    if secret_file:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the webhook secret file {secret_file}: {exc.strerror}") from None
    return check_secret(secret) if secret else ""


@dataclass(frozen=True)
class WebhookRetry:
    """When a failed delivery is tried again. After failed attempt ``n`` the next one waits
    ``base_s * factor**(n-1)`` seconds, at most ``base_s * 4320``; once ``base_s * 17280`` seconds have passed
    since the first attempt, a failed attempt abandons the delivery. With the default 5 s: 5 s, 30 s, 3 min,
    18 min, 1.8 h, then every 6 h; the last (10th) attempt about 26 hours after the first, so deliveries are
    retried for at least 24 hours. A smaller base scales the whole schedule (tests)."""

    base_s: float = 5.0
    factor: float = 6.0

    @property
    def cap_s(self) -> float:
        return self.base_s * 4320

    @property
    def window_s(self) -> float:
        return self.base_s * 17280

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.cap_s, self.base_s * self.factor ** (attempt - 1))

    def gives_up(self, since_first_s: float) -> bool:
        """Whether a failed attempt made ``since_first_s`` seconds after the first one is the last."""
        return since_first_s >= self.window_s


@dataclass(frozen=True)
class WebhookSettings:
    """``secret``: the Standard Webhooks signing secret (``whsec_...``; empty: webhooks off); ``policy``: the
    SSRF policy (its allow-list empty: webhooks off, callback URLs refused); ``retry``: the schedule;
    ``timeout_s``: deadline of one request; ``senders``: requests in flight at once per gateway;
    ``poll_s``: how often an idle dispatcher looks for due events written by other gateways."""

    secret: str = ""
    policy: WebhookPolicy = field(default_factory=WebhookPolicy)
    retry: WebhookRetry = field(default_factory=WebhookRetry)
    timeout_s: float = 10.0
    senders: int = 4
    poll_s: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.secret) and self.policy.enabled

    @property
    def lease_s(self) -> float:
        """How long a claimed event stays with its gateway: one request's deadline with a margin."""
        return 2 * self.timeout_s + 10.0


def event_type(state: int) -> str:
    """``job.succeeded`` / ``job.failed`` / ``job.cancelled``."""
    return "job." + reconstruction_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def event_body(job: Job) -> bytes:
    """The event of an ended job (see the module docstring), UTF-8 JSON; the same bytes for the same job."""
    event = {
        "type": event_type(job.state),
        "timestamp": job.end_time.ToJsonString(),
        "data": {"job": json_format.MessageToDict(job, preserving_proto_field_name=True)},
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(signer: Webhook, event_id: str, body: bytes, now_s: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at time ``now_s`` (seconds since the epoch)."""
    sent_at = datetime.fromtimestamp(math.floor(now_s), tz=UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(now_s)),
        "webhook-signature": signer.sign(event_id, sent_at, body),
    }


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class WebhookDispatcher:
    """Sends the events queued in ``store`` (see the module docstring): one thread claims due events, up to
    ``settings.senders`` requests run at once. The backlog gauge counts the store's undelivered events."""

    def __init__(self, store: WebhookOutbox, settings: WebhookSettings) -> None:
        self._store, self._settings = store, settings
        self._owner = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._slots = threading.Semaphore(settings.senders)
        self._pool = ThreadPoolExecutor(settings.senders, thread_name_prefix="gateway-webhook")
        self._thread: threading.Thread | None = None
        WEBHOOK_BACKLOG.set_function(self._backlog)

    def _backlog(self) -> float:
        """Undelivered events for the gauge; NaN while the store is unreachable."""
        try:
            return self._store.webhook_backlog()
        except StoreUnavailable:
            return float("nan")

    def start(self, owner: str) -> None:
        """Start sending as gateway ``owner`` (the leases this id held before a restart are given up); a
        gateway without webhooks (no secret or no allowed host) sends nothing and leaves the events to the
        gateways of the store that have them."""
        if not self._settings.enabled:
            return
        self._owner = owner
        released = self._store.release_webhooks(owner)
        if released:
            log.info("webhook deliveries of a previous run released", extra={"deliveries": released})
        signer = Webhook(self._settings.secret)
        self._thread = threading.Thread(
            target=self._run, args=(signer,), name="gateway-webhooks", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; requests in flight end within their deadline (their attempts are recorded)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, signer: Webhook) -> None:
        """Claim one due event per free sending slot; idle until the next is due (at most ``poll_s``); every
        :data:`SWEEP_S` drop the finished deliveries of deleted jobs."""
        poll_s, sweep_at = self._settings.poll_s, 0.0
        while not self._stop.is_set():
            if time.monotonic() >= sweep_at:
                sweep_at = time.monotonic() + SWEEP_S
                self._sweep()
            if not self._slots.acquire(timeout=poll_s):
                continue
            try:
                claimed = self._store.claim_webhooks(self._owner, self._settings.lease_s, 1)
                due_s = None if claimed else self._store.next_webhook_due_s()
            except StoreUnavailable as exc:
                log.warning("job store unreachable; webhooks wait", extra={"error": str(exc)})
                claimed, due_s = [], poll_s
            if claimed and not self._stop.is_set():
                self._pool.submit(self._send, claimed[0], signer)
                continue
            self._slots.release()
            self._wake.wait(poll_s if due_s is None else min(max(due_s, 0.01), poll_s))
            self._wake.clear()

    def _sweep(self) -> None:
        try:
            swept = self._store.sweep_webhooks()
        except StoreUnavailable as exc:
            log.warning("job store unreachable; webhook sweep skipped", extra={"error": str(exc)})
            return
        if swept:
            log.info("deliveries of deleted jobs removed", extra={"deliveries": swept})

    def _send(self, due: DueDelivery, signer: Webhook) -> None:
        try:
            self._attempt(due, signer)
        except StoreUnavailable as exc:  # the lease expires and the event is sent again
            log.warning(
                "could not record a webhook attempt",
                extra={"event_id": due.delivery.event_id, "error": str(exc)},
            )
        except Exception:
            log.exception("webhook attempt failed unexpectedly", extra={"event_id": due.delivery.event_id})
        finally:
            self._slots.release()
            self._wake.set()

    def _attempt(self, due: DueDelivery, signer: Webhook) -> None:
        """Send ``due`` once and record the attempt with the delivery's next step."""
        delivery, settings = due.delivery, self._settings
        number = len(delivery.attempts) + 1
        now_s = time.time()
        result = self._post(delivery, event_body(due.job), signer, now_s)
        attempt = delivery.attempts.add(
            number=number, time=_stamp(now_s), http_status=result.http_status, error=result.error,
            duration_s=round(result.duration_s, 3),
        )  # fmt: skip
        first_s = delivery.attempts[0].time.ToNanoseconds() / 1e9
        retry_in_s: float | None = None
        delivery.ClearField("next_attempt_time")
        if result.delivered:
            delivery.delivered, outcome = True, "delivered"
        elif settings.retry.gives_up(now_s - first_s):
            delivery.abandoned, outcome = True, "abandoned"
        else:
            retry_in_s, outcome = settings.retry.delay_s(number), "retry"
            delivery.next_attempt_time.CopyFrom(_stamp(now_s + retry_in_s))
        WEBHOOK_DELIVERIES.labels(outcome).inc()
        fields = {
            "event_id": delivery.event_id, "job_id": due.job.id, "attempt": number, "outcome": outcome,
            "http_status": attempt.http_status, "error": attempt.error, "retry_in_s": retry_in_s,
        }  # fmt: skip
        log.log(logging.INFO if result.delivered else logging.WARNING, "webhook attempt", extra=fields)
        if not self._store.record_webhook_attempt(self._owner, delivery, retry_in_s):
            log.warning("webhook lease lost; another gateway sends the event", extra=fields)

    def _post(
        self, delivery: reconstruction_pb2.WebhookDelivery, body: bytes, signer: Webhook, now_s: float
    ) -> AttemptResult:
        """One request (the URL and its addresses checked again first: the allow-list may have changed, the
        host's DNS answer too)."""
        started = time.monotonic()
        try:
            target = self._settings.policy.check_url(delivery.url)
            address = self._settings.policy.addresses(target)[0]
        except WebhookRefused as refused:
            return AttemptResult(0, f"refused: {refused}", time.monotonic() - started)
        headers = signed_headers(signer, delivery.event_id, body, now_s)
        return post(target, address, headers, body, self._settings.timeout_s)
