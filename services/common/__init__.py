"""Server plumbing shared by every SyncHuman gRPC service (preprocess, stage 1, stage 2, gateway).

Modules and their main entry points:

* :mod:`services.common.stage_server` - process lifecycle: :class:`StageSpec` (what to serve) and
  :class:`StageServer` (gRPC server with grpc.health.v1, reflection, the observability interceptor, health
  NOT_SERVING while loading, drain on stop); :func:`serve_forever` (SIGINT/SIGTERM -> graceful shutdown);
  :func:`add_server_arguments` / :func:`add_stage_arguments` (shared command-line options incl. metrics port).
* :mod:`services.common.stage_runtime` - per-request execution: :class:`StageRuntime.run_job` (admission with
  a bounded queue -> RESOURCE_EXHAUSTED + RetryInfo, work in a worker thread with progress streaming, stop on
  cancel / deadline / shutdown); rich ``google.rpc.Status`` helpers :func:`abort`, :func:`bad_request`,
  :func:`error_info`, :func:`retry_info`; :func:`guard` (input errors -> INVALID_ARGUMENT, others INTERNAL).
* :mod:`services.common.stage_io` - blobs on streams: :func:`blob_header` (size + SHA-256),
  :func:`blob_chunks` (<= 1 MiB chunks), :func:`receive_blobs` (reassembly with order, size and SHA-256
  checks), PNG and voxel-structure helpers.
* :mod:`services.common.observability` - :class:`ObservabilityInterceptor` (JSON log line, Prometheus
  counters / latency histogram / in-flight gauge per RPC, refusal of calls whose deadline already passed)
  and :func:`start_metrics_server`.
* :mod:`services.common.gpu_queue`, :mod:`services.common.worker` - the slot limiter and worker-thread
  streaming used by :mod:`stage_runtime`.
"""
