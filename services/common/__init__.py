"""Server plumbing shared by every SyncHuman gRPC service (preprocess, stage 1, stage 2, gateway).

Modules and their main entry points:

* :mod:`services.common.endpoints` - default ports, host and addresses, and the gRPC service names
  (:data:`DEFAULT_PORTS`, :data:`HEALTH_SERVICES`, :data:`STAGE_SERVICES`, :func:`default_address`), the
  stages' from :mod:`synchuman.stage_catalog`.
* :mod:`services.common.grpc_server` - :class:`ServiceServer`, the one gRPC server builder (servicer,
  grpc.health.v1, server reflection under ``grpc.reflection.v1`` and ``v1alpha``, the observability
  interceptor, message limits) used by the stage servers and the gateway.
* :mod:`services.common.stage_server` - process lifecycle of a stage: :class:`StageSpec` (what to serve) and
  :class:`StageServer` (health NOT_SERVING while loading, backend warm-up, drain then backend close on stop);
  :func:`serve_forever` (SIGINT/SIGTERM -> graceful shutdown); :func:`add_server_arguments` /
  :func:`add_stage_arguments` (shared command-line options incl. metrics port).
* :mod:`services.common.backend` - the :class:`StageBackend` protocol every ``services/<stage>/backend.py``
  implements (``info``, ``warm_up``, ``run``, ``close``) and :func:`verified_checkpoints`.
* :mod:`services.common.servicer` - the stage RPCs' plumbing: :class:`StageServicer`, :func:`upload_rpc` /
  :func:`info_rpc` and the :class:`StageCall` a stage's handler gets (``run`` the backend with progress and
  admission, ``send_blobs``).
* :mod:`services.common.stage_runtime` - per-request execution: :class:`StageRuntime.run_job` (admission with
  a bounded queue -> RESOURCE_EXHAUSTED + RetryInfo, work in a worker thread with progress streaming, stop on
  cancel / deadline / shutdown); :func:`guard` (input errors -> INVALID_ARGUMENT, others INTERNAL).
* :mod:`services.common.rpc_status` - rich ``google.rpc.Status`` errors, shared with the gateway:
  :func:`abort`, :func:`bad_request`, :func:`error_info`, :func:`retry_info`, :func:`retry_delay_s`.
* :mod:`services.common.stage_io` - blobs on streams, both directions: :func:`upload_messages`,
  :func:`read_start`, :func:`receive_blobs`, :func:`send_blobs`, :class:`BlobAssembler` (size and SHA-256
  checks), PNG and voxel-structure helpers.
* :mod:`services.common.conversions` - the core's options, reports, progress events and stage-1 output in
  their ``synchuman.v1`` form and back.
* :mod:`services.common.observability` - :class:`ObservabilityInterceptor` (JSON log line, Prometheus
  counters / latency histogram / in-flight gauge per RPC, refusal of calls whose deadline already passed)
  and :func:`start_metrics_server`; :mod:`services.common.gpu_metrics` - the process's GPU memory gauges.
* :mod:`services.common.tracing` - OpenTelemetry tracing, off unless an OTLP endpoint is configured (SDK
  imported only then): :func:`~services.common.tracing.configure`, the server-span interceptor, the gateway's
  job and stage-call spans, a span per progress phase.
* :mod:`services.common.auth` - the bearer-token interceptor and :func:`authorized_channel`.
* :mod:`services.common.arguments` - the service mains' argument-error convention.
* :mod:`services.common.gpu_queue`, :mod:`services.common.worker` - the slot limiter and worker-thread
  streaming used by :mod:`stage_runtime`.
* :mod:`services.common.healthcheck` - the container health probe.
"""
