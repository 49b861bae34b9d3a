"""One webhook request: a signed POST to a checked address, never following a redirect, within a deadline.

The connection goes to an address the policy checked (:meth:`gateway.webhooks_policy.WebhookPolicy.addresses`)
while the ``Host`` header and, for https, the TLS server name and certificate check use the URL's host, so a
DNS answer that changes between the check and the connection cannot redirect the request. The whole exchange
(connect, send, status line and headers) must end within ``timeout_s``: a receiver that stalls or trickles is
cut off then. Only the status and the first bytes of the body are read.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from gateway.webhooks_policy import Target

#: Body bytes of a failed answer kept in the attempt's error.
ERROR_BODY_BYTES = 200
USER_AGENT = "synchuman-gateway-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    """``http_status`` (0 when no answer came), ``error`` ("" on a 2xx answer) and ``duration_s``."""

    http_status: int
    error: str
    duration_s: float

    @property
    def delivered(self) -> bool:
        return not self.error


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP to ``address`` (a checked IP) on behalf of ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout_s: float) -> None:
        super().__init__(host, port, timeout=timeout_s)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTlsConnection(_PinnedConnection):
    """HTTPS to ``address`` with the TLS server name and certificate check of ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout_s: float, tls: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout_s)
        self.tls = tls

    def connect(self) -> None:
        super().connect()
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def post(
    target: Target,
    address: str,
    headers: dict[str, str],
    body: bytes,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> AttemptResult:
    """POST ``body`` with ``headers`` to ``target`` at ``address``: a 2xx answer delivers; any other answer
    (a 3xx included: redirects are not followed), a connection error or the deadline is a failed attempt."""
    if target.tls:
        connection: _PinnedConnection = _PinnedTlsConnection(
            target.host, target.port, address, timeout_s, tls or ssl.create_default_context()
        )
    else:
        connection = _PinnedConnection(target.host, target.port, address, timeout_s)
    started = time.monotonic()
    deadline = threading.Timer(timeout_s, _cut, (connection,))
    deadline.start()
    try:
        connection.request(
            "POST",
            target.path,
            body,
            {**headers, "content-type": "application/json", "user-agent": USER_AGENT},
        )
        response = connection.getresponse()
        status = response.status
        if 200 <= status < 300:
            return AttemptResult(status, "", time.monotonic() - started)
        if 300 <= status < 400:
            where = response.getheader("location", "")
            error = f"HTTP {status}: redirect to {where!r} not followed; give the final URL as callback_url"
        else:
            error = f"HTTP {status} {response.reason}: {_excerpt(response.read(ERROR_BODY_BYTES))}"
        return AttemptResult(status, error, time.monotonic() - started)
    except (OSError, http.client.HTTPException) as exc:
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s:
            return AttemptResult(0, f"no answer within {timeout_s:g} s", elapsed)
        return AttemptResult(0, f"{type(exc).__name__}: {exc}".rstrip(": "), elapsed)
    finally:
        deadline.cancel()
        connection.close()


def _cut(connection: http.client.HTTPConnection) -> None:
    """The deadline passed: shut the socket down, which ends a blocked send or receive at once."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _excerpt(data: bytes) -> str:
    """The start of a body, printable, on one line."""
    text = data.decode("utf-8", "replace")
    return " ".join(text.split())[:ERROR_BODY_BYTES] or "(empty body)"
