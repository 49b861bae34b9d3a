"""gRPC health of every replica behind one stage target, for the gateway's readiness.

A stage target such as ``dns:///stage1:50053`` stands for every address the name resolves to (compose's
``--scale stage1=2`` gives two), and the stage channel spreads calls over them round robin, so one health
call through it answers for whichever replica it reached. :class:`ReplicaHealth` resolves the target itself
and asks every address over a channel of its own, all at once: the stage is up while at least one replica
answers SERVING, and the replicas that do not are named. A target that resolves to a single address (or to
none, or that is a ``unix:`` socket) is not split: the caller asks its stage channel as before.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import authorized_channel
from services.common.tls import ClientTls, open_channel

_LITERAL_SCHEMES = ("ipv4:", "ipv6:")


def _host_port(address: str) -> tuple[str, str]:
    """``"host:port"`` / ``"[v6]:port"`` -> (host, port); port ``""`` when there is none."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = address.rpartition(":")
    return (host, port) if host and ":" not in host else (address, "")


def _address(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def target_addresses(target: str) -> tuple[list[str], str]:
    """The ``ip:port`` addresses gRPC target ``target`` stands for, and the host name they were resolved
    from (``""`` for address literals). ``ipv4:a:p,b:p`` / ``ipv6:[a]:p,...`` list theirs; ``dns:///host:port``,
    ``dns:host:port`` and ``host:port`` are resolved now; anything else (``unix:``, no port, a name that does
    not resolve) gives ``[]``."""
    if target.startswith(_LITERAL_SCHEMES):
        body = target.split(":", 1)[1].removeprefix("//").lstrip("/")
        return [part for part in body.split(",") if part], ""
    if target.startswith("dns:"):
        target = target.removeprefix("dns:").removeprefix("//").split("/", 1)[-1]
    elif "://" in target or target.startswith("unix:"):
        return [], ""
    host, port = _host_port(target)
    if not port:
        return [], ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [], ""
    addresses = list(dict.fromkeys(_address(str(info[4][0]), port) for info in infos))
    try:
        ipaddress.ip_address(host)
        return addresses, ""
    except ValueError:
        return addresses, host


class ReplicaHealth:
    """Asks the gRPC health of each address of ``target`` over its own channel (kept while the address
    resolves), with the stage channel's ``token``, ``tls`` and channel ``options``."""

    def __init__(
        self,
        target: str,
        token: str = "",
        tls: ClientTls | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self._token = token
        self._tls = tls
        self._options = [option for option in options if option[0] != "grpc.lb_policy_name"]
        self._channels: dict[str, tuple[grpc.Channel, health_pb2_grpc.HealthStub]] = {}
        self._lock = threading.Lock()

    def check(self, timeout_s: float = 1.0) -> dict[str, bool | None] | None:
        """Replica address -> True (SERVING), False (down or not serving) or None (no health service); None
        when the target does not stand for several addresses (ask the stage channel instead)."""
        addresses, host = target_addresses(self.target)
        with self._lock:  # asked by the readiness monitor and by the job workers' capacity look-ups
            for gone in set(self._channels) - set(addresses):
                self._channels.pop(gone)[0].close()
            if len(addresses) < 2:
                return None
            stubs = {address: self._stub(address, host) for address in addresses}
        request = health_pb2.HealthCheckRequest(service="")
        calls = {address: stub.Check.future(request, timeout=timeout_s) for address, stub in stubs.items()}
        return {address: _serving(call) for address, call in calls.items()}

    def _stub(self, address: str, host: str) -> health_pb2_grpc.HealthStub:
        if address not in self._channels:
            options = list(self._options)
            if self._tls is not None and host and not self._tls.server_name:
                options.append(("grpc.ssl_target_name_override", host))  # the certificate names the host
            channel = open_channel(address, self._tls, options)
            stub = health_pb2_grpc.HealthStub(authorized_channel(channel, self._token))
            self._channels[address] = (channel, stub)
        return self._channels[address][1]

    def close(self) -> None:
        """Close the per-address channels."""
        with self._lock:
            for channel, _ in self._channels.values():
                channel.close()
            self._channels.clear()


def _serving(call: grpc.Future) -> bool | None:
    try:
        reply = call.result()
    except grpc.RpcError as error:
        return None if error.code() == grpc.StatusCode.UNIMPLEMENTED else False  # type: ignore[attr-defined]
    return reply.status == health_pb2.HealthCheckResponse.SERVING
