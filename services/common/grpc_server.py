"""The one gRPC server builder of every SyncHuman service (the three stages and the gateway).

:class:`ServiceServer` binds a ``grpc.Server`` with the service's servicer, grpc.health.v1, server
reflection under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha`` (clients such as grpcurl and
``buf curl`` try v1 first; grpcio-reflection 1.x registers only v1alpha), the tracing interceptor (when
:mod:`services.common.tracing` is on: a server span per call), the observability interceptor,
4 MiB message limits, and optionally a bearer token (:mod:`services.common.auth`: health and reflection stay
open) and TLS or mutual TLS (:mod:`services.common.tls`). It is bound to its port when constructed and
answers after :meth:`start`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.common import tracing
from services.common.auth import GATEWAY_TOKEN_HINT, BearerTokenInterceptor
from services.common.observability import ObservabilityInterceptor
from services.common.tls import ServerTls

#: Largest message a service sends or accepts (blobs travel in <= 1 MiB chunks).
MAX_MESSAGE_BYTES = 4 << 20
#: A client connection is asked to reconnect (GOAWAY) after this long; calls in flight finish undisturbed. The
#: reconnection re-resolves ``dns:///`` targets, so the gateway's round robin reaches replicas added since
#: (autoscaling) within this time.
MAX_CONNECTION_AGE_MS = 60_000

REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."


def _register_reflection_v1_descriptor() -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to the default descriptor pool (so reflection can describe
    its own v1 service): the v1alpha file under the v1 package, as the two protocols are identical on the
    wire.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
            method.output_type = method.output_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(server: grpc.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for ``service_names`` (plus health and reflection itself) under v1 and v1alpha."""
    _register_reflection_v1_descriptor()
    names = (*service_names, health.SERVICE_NAME, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )


class ServiceServer:
    """A gRPC server bound to ``address`` serving one SyncHuman service; ``port`` / ``address`` are the bound
    ones (``address`` may ask for port 0).

    ``name``: label of logs, metrics and RPC threads; ``service_name``: the service's full proto name (health
    and reflection); ``add_servicer(server)`` registers its RPCs; ``workers``: RPC handler threads;
    ``auth_token``: bearer token every call but health and reflection must send (empty: none; a refusal
    names ``token_hint``); ``tls``: serve over TLS (mTLS when it names a client CA; None: plaintext).
    Health starts NOT_SERVING.
    """

    def __init__(
        self,
        name: str,
        service_name: str,
        address: str,
        add_servicer: Callable[[grpc.Server], None],
        workers: int,
        max_concurrent_rpcs: int,
        auth_token: str = "",
        tls: ServerTls | None = None,
        token_hint: str = GATEWAY_TOKEN_HINT,
    ) -> None:
        self.name = name
        self.service_name = service_name
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            interceptors=(
                *((tracing.TracingInterceptor(),) if tracing.enabled() else ()),
                ObservabilityInterceptor(name),
                *((BearerTokenInterceptor(auth_token, token_hint),) if auth_token else ()),
            ),
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        add_servicer(self.server)
        enable_reflection(self.server, (service_name,))
        self.set_serving(False)
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, tls.credentials())
        if self.port == 0:
            raise OSError(f"{name}: cannot listen on {address} (in use or not a local address)")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"

    def start(self) -> None:
        """Start answering calls."""
        self.server.start()

    def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server as a whole and for the service."""
        statuses = health_pb2.HealthCheckResponse
        status = statuses.SERVING if serving else statuses.NOT_SERVING
        for name in ("", self.service_name):
            self.health.set(name, status)

    def stop(self, grace_s: float | None) -> threading.Event:
        """Stop accepting calls; calls in flight get ``grace_s`` seconds (None: cancelled now). The event is
        set once the server has stopped."""
        return self.server.stop(grace=grace_s)
