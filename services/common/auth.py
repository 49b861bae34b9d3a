"""Bearer-token authentication for gRPC: the server interceptor and the client side that sends the token.

A server built with :class:`BearerTokenInterceptor` refuses every call without the metadata
``authorization: Bearer <token>`` with ``UNAUTHENTICATED``, except health checks and reflection (load
balancers, orchestrators and ``buf curl --reflect`` must work without the secret). Clients add the header
with :func:`authorized_channel`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

#: Method prefixes that never need the token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
HEADER = "authorization"


def _unauthenticated(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that fails the call with UNAUTHENTICATED."""

    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


#: Where a client of the gateway gets its token (the refusal's hint).
GATEWAY_TOKEN_HINT = "this gateway's token (synchuman reconstruct --token, or $SYNCHUMAN_GATEWAY_AUTH_TOKEN)"
#: Where a client of a stage service gets its token (the gateway: --stage-token).
STAGE_TOKEN_HINT = "the stage services' shared token ($SYNCHUMAN_STAGE_TOKEN; the gateway's --stage-token)"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call except health and reflection; a refusal
    tells the caller to send ``hint``."""

    def __init__(self, token: str, hint: str = GATEWAY_TOKEN_HINT) -> None:
        if not token:
            raise ValueError("BearerTokenInterceptor needs a non-empty token")
        self._expected = f"Bearer {token}".encode()
        self._hint = hint

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = next((v for k, v in handler_call_details.invocation_metadata or () if k.lower() == HEADER), "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if secrets.compare_digest(sent_bytes, self._expected):
            return handler
        reason = "wrong token" if sent else "no token"
        return _unauthenticated(
            handler,
            f"{reason}: send the metadata 'authorization: Bearer <token>' with {self._hint}",
        )


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _AddToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the authorization metadata to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = (HEADER, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def authorized_channel(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` sending ``authorization: Bearer <token>`` on every call (as is when ``token`` is empty)."""
    return grpc.intercept_channel(channel, _AddToken(token)) if token else channel
