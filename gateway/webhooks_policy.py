"""Which callback URLs a job may carry and which addresses the gateway may send webhooks to (the SSRF
policy).

A callback URL must be ``http`` or ``https``, ASCII, at most :data:`MAX_URL_CHARS` characters, without user
name, password or fragment, and name a host on the operator's allow-list (``--webhook-allow-hosts``: exact
names or addresses, ``*.example.com`` for any subdomain, ``*`` for any host; an empty list refuses every
callback URL).
Every address the host resolves to must be public: loopback, link-local, private (RFC 1918, ULA, CGNAT) and
other non-global addresses are refused unless the operator allows private addresses
(``--webhook-allow-private``); unspecified and multicast addresses are always refused. The URL is checked at
submission (:meth:`WebhookPolicy.check_submitted`, so a bad one is refused with INVALID_ARGUMENT) and again
before every delivery (:meth:`WebhookPolicy.addresses`): a host whose DNS answer changed to a private address
since (DNS rebinding) is refused then, and the request goes to an address that was checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

#: Longest callback URL accepted, in characters.
MAX_URL_CHARS = 2048

Resolver = Callable[[str, int], list[str]]


class WebhookRefused(ValueError):
    """A callback URL or address the policy refuses; the message says why and what to do."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order; :class:`WebhookRefused` when the
    name does not resolve."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the callback host {host!r} does not resolve ({exc})") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))


@dataclass(frozen=True)
class Target:
    """A checked callback URL: ``host`` (no brackets), ``port``, ``tls`` (https) and ``path`` (path and
    query, the request target)."""

    url: str
    host: str
    port: int
    tls: bool
    path: str


def _kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """What makes a non-global address non-global, for the refusal message."""
    for kind in ("loopback", "link_local", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


@dataclass(frozen=True)
class WebhookPolicy:
    """``allow_hosts``: host patterns (lower case; see the module docstring); ``allow_private``: accept
    non-global addresses (loopback, link-local, private) too; ``resolver``: host, port -> addresses."""

    allow_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    resolver: Resolver = resolve

    @property
    def enabled(self) -> bool:
        """Whether any callback URL can pass (the allow-list is not empty)."""
        return bool(self.allow_hosts)

    def check_url(self, url: str) -> Target:
        """The parsed ``url`` when its form and host pass (no DNS lookup); :class:`WebhookRefused` else."""
        if not self.enabled:
            raise WebhookRefused(
                "this gateway sends no webhooks (its operator allowed no callback host: "
                "--webhook-allow-hosts); submit without callback_url"
            )
        if len(url) > MAX_URL_CHARS:
            raise WebhookRefused(
                f"callback_url has {len(url)} characters; at most {MAX_URL_CHARS} are allowed"
            )
        if any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise WebhookRefused("callback_url contains spaces or control characters; percent-encode them")
        if not url.isascii():
            raise WebhookRefused(
                "callback_url must be ASCII: percent-encode the path and query, give the host in its "
                "xn-- (punycode) form"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebhookRefused(f"callback_url {url!r} is not a valid URL: {exc}") from exc
        return Target(
            url,
            self._host(parts),
            port or (443 if parts.scheme == "https" else 80),
            parts.scheme == "https",
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        )

    def _host(self, parts: SplitResult) -> str:
        """The URL's host, when its scheme and host are allowed and it has no credentials or fragment."""
        if parts.scheme not in ("http", "https"):
            raise WebhookRefused(
                f"callback_url must be an http:// or https:// URL, not {parts.scheme or 'a relative'}:// one"
            )
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused(
                "callback_url must not contain a user name or password; authenticate the webhook by its "
                "signature (webhook-signature header) instead"
            )
        if parts.fragment:
            raise WebhookRefused("callback_url must not have a #fragment (it is never sent)")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise WebhookRefused("callback_url has no host")
        if not any(_matches(pattern, host) for pattern in self.allow_hosts):
            raise WebhookRefused(
                f"the callback host {host!r} is not on this gateway's allow-list "
                f"({', '.join(self.allow_hosts)}); ask its operator to add it (--webhook-allow-hosts)"
            )
        return host

    def addresses(self, target: Target) -> list[str]:
        """The addresses of ``target``'s host, each one allowed; :class:`WebhookRefused` when the host does
        not resolve or any address is refused (one private address among public ones refuses them all)."""
        found = self.resolver(target.host, target.port)
        if not found:
            raise WebhookRefused(f"the callback host {target.host!r} has no address")
        for text in found:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if address.is_unspecified or address.is_multicast:
                raise WebhookRefused(
                    f"the callback host {target.host!r} resolves to {text}, which is no host"
                )
            if not address.is_global and not self.allow_private:
                raise WebhookRefused(
                    f"the callback host {target.host!r} resolves to {text}, a {_kind(address)} address: "
                    "webhooks go to public addresses only, unless the gateway's operator allows private ones "
                    "(--webhook-allow-private)"
                )
        return found

    def check_submitted(self, url: str) -> Target:
        """At submission: the URL's form, its host and every address it resolves to (see the module
        docstring); :class:`WebhookRefused` with the reason."""
        target = self.check_url(url)
        self.addresses(target)
        return target


def _matches(pattern: str, host: str) -> bool:
    """``host`` (lower-cased) against one allow-list entry: ``*``, ``*.domain`` (subdomains) or a name."""
    host = host.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def parse_allow_hosts(text: str) -> tuple[str, ...]:
    """``--webhook-allow-hosts``: comma- or space-separated host patterns, lower-cased; ValueError for an
    entry that is not a host name, an address, ``*`` or ``*.domain``."""
    hosts = []
    for entry in text.replace(",", " ").split():
        entry = entry.strip().lower().rstrip(".")
        name = entry[2:] if entry.startswith("*.") else entry
        if entry != "*" and (not name or any(c in name for c in "/@?#*") or name.startswith(("[", "."))):
            raise ValueError(
                f"{entry!r} is no host pattern: give host names (hooks.example.com), addresses "
                "(203.0.113.7), *.example.com for subdomains or * for any host"
            )
        hosts.append(entry)
    return tuple(hosts)
