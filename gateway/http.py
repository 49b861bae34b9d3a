"""The HTTP/JSON bridge of the gateway (FastAPI on uvicorn, in the gateway process).

Same operations as the gRPC ReconstructionService, on the same :class:`~gateway.manager.JobManager`:

* ``POST /v1/jobs`` - submit: ``multipart/form-data`` (file field ``image``, optional fields ``options`` (the
  ``JobOptions`` message as JSON) and ``idempotency_key``) or the raw photo as the body (``image/*`` or
  ``application/octet-stream``; options as the ``options`` query parameter). ``Idempotency-Key`` header works
  for both; ``callback_url`` (form field or query parameter): the job's webhook (:mod:`gateway.webhooks`).
  201 with ``{"job": ..., "deduplicated": false}``, 200 when deduplicated.
* ``GET /v1/jobs`` (``page_size``, ``page_token``, ``state``), ``GET /v1/jobs/{id}``,
  ``POST /v1/jobs/{id}/cancel``.
* ``GET /v1/profiles`` - the named output profiles (``options.profile``) with their effective options.
* ``GET /v1/jobs/{id}/events`` - server-sent events (``id`` = sequence; resume with ``Last-Event-ID`` or
  ``?after=N``), one per job event, the stream closes after the ``finished`` event.
* ``GET /v1/jobs/{id}/artifacts/{name}`` - a file with its media type, streamed, ``ETag`` = SHA-256, resumable
  with ``Range`` (or a 307 to a presigned S3 URL): see :mod:`gateway.http_download`.
* ``GET /healthz`` = ``GET /readyz`` (200 ready / 503 naming the stage or job store that is missing: see
  :mod:`gateway.readiness`), ``GET /livez``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``/docs``.
* ``GET /`` - the web page, ``GET /docs`` - Swagger UI, both from local files (:mod:`gateway.web`).

Errors are JSON ``{"error": {"code", "message", "details"}}`` with the gRPC code mapped to an HTTP status
(see :data:`HTTP_STATUS`); RESOURCE_EXHAUSTED carries ``Retry-After``. When a token is configured or API keys
exist, every ``/v1`` route requires ``Authorization: Bearer <token or API key>``; a key sees only its own jobs
(:mod:`gateway.tenants`).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvicorn
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from google.protobuf import json_format
from google.rpc import error_details_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import JobError
from gateway.http_download import RANGE_FORMS, artifact_response
from gateway.manager import JobManager
from gateway.openapi_doc import download_responses, error_responses, job_links, profiles_responses, upload_doc
from gateway.paging import PAGE_TOKEN
from gateway.request_fields import JOB_ID_PATTERN, MAX_NAME_CHARS, MAX_SEQUENCE
from gateway.store import Event, StoreError
from gateway.store_errors import as_job_error
from gateway.tenants import TenantAccess, TenantJobs
from gateway.web import add_web_page
from services.common import tracing
from services.common.endpoints import DEFAULT_HOST
from services.common.rpc_status import bad_request
from services.common.tls import ServerTls
from synchuman.v1 import common_pb2, reconstruction_pb2

#: gRPC status -> HTTP status of the bridge.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
UPLOAD_TYPES = ("image/", "application/octet-stream")
#: ``state`` query values: the JobState names, lower case, upper case or with the JOB_STATE_ prefix.
_STATE_PATTERN = "^(|{})$".format(
    "|".join(
        form
        for name in reconstruction_pb2.JobState.keys()
        if name != "JOB_STATE_UNSPECIFIED"
        for form in (name, name.removeprefix("JOB_STATE_"), name.removeprefix("JOB_STATE_").lower())
    )
)
_JOB_ID = Path(pattern=f"^{JOB_ID_PATTERN}$", description="a job id from SubmitJob")
#: Every method a route could be asked for; the others of a path answer 405 with the path's real Allow.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
#: Seconds without a job event after which the event stream sends a comment (keeps proxies from closing it).
KEEP_ALIVE_S = 5.0


def _to_dict(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class UploadTooLarge(JobError):
    """The request body is over the upload limit: gRPC ``INVALID_ARGUMENT``, HTTP 413 (Content Too Large)."""

    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the upload is larger than the limit of {limit} bytes; send a smaller photo "
            "(the person only needs about 1000 pixels of height)",
            bad_request("image", "too large"),
        )


def _error_response(error: JobError) -> JSONResponse:
    headers = {}
    for detail in error.details:
        if isinstance(detail, error_details_pb2.RetryInfo):
            headers["Retry-After"] = str(max(1, math.ceil(detail.retry_delay.ToTimedelta().total_seconds())))
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    headers.update(getattr(error, "http_headers", {}))
    body = {
        "error": {
            "code": error.code.name,
            "message": error.message,
            "details": [{"@type": d.DESCRIPTOR.full_name, **_to_dict(d)} for d in error.details],
        }
    }
    status = getattr(error, "http_status", None) or HTTP_STATUS.get(error.code, 500)
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(field: str, message: str) -> JobError:
    return JobError(grpc.StatusCode.INVALID_ARGUMENT, message, bad_request(field, message))


def _parse_options(text: str | None) -> common_pb2.JobOptions:
    options = common_pb2.JobOptions()
    if text:
        try:
            json_format.Parse(text, options)
        except json_format.ParseError as exc:
            raise _invalid("options", f"options is not a JobOptions JSON object: {exc}") from exc
    return options


def _validation_error(error: RequestValidationError) -> JobError:
    """FastAPI's parameter validation as the bridge's 400 INVALID_ARGUMENT, one field violation each."""
    violations = [
        error_details_pb2.BadRequest.FieldViolation(
            field=".".join(str(part) for part in item.get("loc", ())[1:]) or "request",
            description=str(item.get("msg", "invalid")),
        )
        for item in error.errors()
    ]
    message = "; ".join(f"{v.field}: {v.description}" for v in violations) or "invalid request"
    return JobError(
        grpc.StatusCode.INVALID_ARGUMENT, message, error_details_pb2.BadRequest(field_violations=violations)
    )


def _add_allow_routes(app: FastAPI) -> None:
    """``OPTIONS`` on every ``/v1`` path answers 204 with ``Allow`` listing all its methods, and the
    methods a path does not have answer 405 with the same ``Allow`` (Starlette would name only the methods
    of the first route that matched the path)."""
    methods: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/v1"):
            methods.setdefault(route.path, set()).update(route.methods)
    for path, allowed in methods.items():
        allow = ", ".join(sorted(allowed | {"OPTIONS"}))

        async def answer(request: Request, allow: str = allow) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            error = JobError(
                grpc.StatusCode.UNIMPLEMENTED, f"{request.method} is not allowed here; use one of {allow}"
            )
            response = _error_response(error)
            response.status_code = 405
            response.headers["Allow"] = allow
            return response

        app.add_api_route(path, answer, methods=sorted(_HTTP_METHODS - allowed), include_in_schema=False)


def _parse_state(text: str) -> int:
    if not text:
        return 0
    name = text.upper() if text.upper().startswith("JOB_STATE_") else f"JOB_STATE_{text.upper()}"
    if name not in reconstruction_pb2.JobState.keys():
        raise _invalid(
            "state", f"unknown state {text!r}; use queued, running, succeeded, failed or cancelled"
        )
    return reconstruction_pb2.JobState.Value(name)


def _sse_message(event: Event) -> str:
    """One job event as a server-sent event: ``id`` = its sequence, ``event`` = its kind."""
    kind = event.WhichOneof("event") or "state"
    return f"id: {event.sequence}\nevent: {kind}\ndata: {json.dumps(_to_dict(event))}\n\n"


async def _event_stream(jobs: TenantJobs, job_id: str, after: int) -> AsyncIterator[str]:
    """The job's events after sequence ``after`` as server-sent events, read from :meth:`JobManager.watch` in
    worker threads until the job's ``finished`` event, with a comment after every :data:`KEEP_ALIVE_S`
    seconds without one; the watch ends when the client goes."""
    gone = threading.Event()
    events = iterate_in_threadpool(jobs.watch(job_id, after, lambda: not gone.is_set()))
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=KEEP_ALIVE_S)
            if not done:
                yield ": keep-alive\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield _sse_message(event)
            pending = asyncio.ensure_future(anext(events))
    finally:
        gone.set()
        pending.cancel()


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    slack = 64 << 10  # multipart boundaries and form fields
    too_large = UploadTooLarge(limit)
    if declared and declared.isdigit() and int(declared) > limit + slack:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit + slack:
            raise too_large
    return bytes(body)


def build_app(manager: JobManager, auth_token: str = "", max_upload_bytes: int = 32 << 20) -> FastAPI:
    """The FastAPI application of the bridge."""
    app = FastAPI(
        title="SyncHuman Serve",
        version="1",
        docs_url=None,  # /docs is served from local files by gateway.web (no CDN)
        redoc_url=None,
        description="One photo of a person to a textured 3D human (GLB). HTTP/JSON bridge of the gRPC "
        "synchuman.v1.ReconstructionService.",
    )
    if tracing.enabled():  # a submission's job span continues the caller's trace (W3C headers)
        app.add_middleware(tracing.HttpTraceContext)

    @app.exception_handler(JobError)
    async def job_error(_: Request, error: JobError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StoreError)
    async def store_error(_: Request, error: StoreError) -> JSONResponse:
        return _error_response(as_job_error(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(error))

    access = TenantAccess(manager, auth_token)

    def tenant_jobs(request: Request) -> TenantJobs:
        """The jobs of the request's tenant (its ``Authorization: Bearer``); 401 otherwise."""
        return access.jobs(request.headers.get("authorization", ""))

    caller = Depends(tenant_jobs)
    auth = [caller]

    not_ready = {503: {"description": "Not ready: a stage is not SERVING or the job store is unreachable"}}

    @app.get("/healthz", tags=["ops"], responses=not_ready)
    def healthz() -> JSONResponse:
        """Same as ``/readyz``."""
        return readyz()

    @app.get("/readyz", tags=["ops"], responses=not_ready)
    def readyz() -> JSONResponse:
        """200 when every stage service is SERVING (or has no health service) and the job store answers, else
        503 naming what is missing; the same answer as the gateway's gRPC health (``gateway.readiness``)."""
        readiness = manager.readiness.report()
        return JSONResponse(readiness.as_json(), status_code=200 if readiness.ready else 503)

    @app.get("/livez", tags=["ops"])
    def livez() -> dict:
        """200 while the process answers (liveness: not ready is no reason to restart it)."""
        return {"status": "ALIVE"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/jobs",
        tags=["jobs"],
        status_code=201,
        openapi_extra=upload_doc(manager.settings.profiles.names, manager.settings.webhooks.enabled),
        operation_id="submit_job",
        responses={
            201: {"description": "The job, created", "links": job_links()},
            200: {
                "description": "Deduplicated: the job submitted earlier with this idempotency key",
                "links": job_links(),
            },
            **error_responses(413, 429),
        },
    )
    async def submit(request: Request, jobs: TenantJobs = caller) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        body = await _read_limited(request, max_upload_bytes)
        key = request.headers.get("idempotency-key", "")
        callback_url = request.query_params.get("callback_url", "")
        if content_type.startswith("multipart/form-data"):
            request._body = body  # the form parser reads the already received (size-checked) body
            try:
                form = await request.form()
            except StarletteHTTPException as exc:  # the form parser's 400 for a malformed body
                raise _invalid("body", f"the multipart/form-data body is malformed ({exc.detail})") from None
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise _invalid("image", "send the photo as the file field 'image'")
            data = await image.read()
            options = _parse_options(form.get("options"))  # type: ignore[arg-type]
            key = str(form.get("idempotency_key") or key)
            callback_url = str(form.get("callback_url") or callback_url)
        elif content_type.startswith(UPLOAD_TYPES) or not content_type:
            data = body
            options = _parse_options(request.query_params.get("options"))
        else:
            raise _invalid(
                "content-type",
                f"unsupported content type {content_type!r}; send multipart/form-data or image/*",
            )
        job, deduplicated = await run_in_threadpool(jobs.submit, data, options, key, callback_url)
        return JSONResponse(
            {"job": _to_dict(job), "deduplicated": deduplicated},
            status_code=200 if deduplicated else 201,
            headers={"Location": f"/v1/jobs/{job.id}"},
        )

    @app.get("/v1/jobs", tags=["jobs"], responses=error_responses())
    def list_jobs(
        jobs: TenantJobs = caller,
        page_size: int = Query(0, ge=0, le=1000, description="0: the default page size (50)"),
        page_token: str = Query(
            "", pattern=f"^({PAGE_TOKEN.pattern})?$", description="next_page_token of the previous page"
        ),
        state: str = Query("", pattern=_STATE_PATTERN, description="only jobs in this state, e.g. queued"),
    ) -> dict:
        page, token = jobs.list(page_size, page_token, _parse_state(state))
        return {"jobs": [_to_dict(j) for j in page], "next_page_token": token}

    @app.get("/v1/profiles", tags=["profiles"], dependencies=auth, responses=profiles_responses())
    def list_profiles() -> dict:
        """The named output profiles a job may give in ``options.profile``, each with the options it sets
        and its effective options (``ListProfiles``)."""
        return _to_dict(manager.profiles())

    @app.get(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        operation_id="get_job",
        responses=error_responses(404),
    )
    def get_job(jobs: TenantJobs = caller, job_id: str = _JOB_ID) -> dict:
        return {"job": _to_dict(jobs.get(job_id))}

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        tags=["jobs"],
        operation_id="cancel_job",
        responses=error_responses(404),
    )
    def cancel_job(jobs: TenantJobs = caller, job_id: str = _JOB_ID) -> dict:
        return {"job": _to_dict(jobs.cancel(job_id))}

    @app.delete(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        operation_id="delete_job",
        responses=error_responses(404, 409),
    )
    def delete_job(jobs: TenantJobs = caller, job_id: str = _JOB_ID) -> dict:
        """Delete a finished job, its events and files (409 while it is queued or running)."""
        return {"deleted_artifacts": jobs.delete(job_id)}

    @app.get(
        "/v1/jobs/{job_id}/artifacts/{name}",
        tags=["jobs"],
        operation_id="get_artifact",
        response_class=Response,
        responses=download_responses(),
    )
    def artifact(
        jobs: TenantJobs = caller,
        job_id: str = _JOB_ID,
        name: str = Path(min_length=1, max_length=MAX_NAME_CHARS),
        asked_range: str = Header("", alias="Range", max_length=100, description=f"one of {RANGE_FORMS}"),
        if_none_match: str = Header("", max_length=1000, description="304 when it names the ETag"),
        if_range: str = Header("", max_length=100, description="the ETag: Range applies only if unchanged"),
    ) -> Response:
        """The file, streamed; resumable with ``Range``, ``If-Range`` and ``If-None-Match`` on the ``ETag``
        (the SHA-256 in ``Job.artifacts``); a 307 to a presigned URL with ``--s3-presigned-downloads``."""
        return artifact_response(jobs, job_id, name, asked_range, if_none_match, if_range)

    @app.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        operation_id="job_events",
        response_class=StreamingResponse,
        responses=error_responses(404),
    )
    async def events(
        jobs: TenantJobs = caller,
        job_id: str = _JOB_ID,
        after: int = Query(0, ge=0, le=MAX_SEQUENCE, description="events after this sequence"),
        last_event_id: str = Header(
            "", pattern="^([0-9]{1,18})?$", description="resume after this event id (overrides after)"
        ),
    ) -> StreamingResponse:
        start = int(last_event_id) if last_event_id else after
        await run_in_threadpool(jobs.get, job_id)  # NOT_FOUND before the stream starts
        return StreamingResponse(
            _event_stream(jobs, job_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    _add_allow_routes(app)
    add_web_page(app)
    return app


class HttpBridge:
    """The bridge served by uvicorn from a background thread (HTTPS with ``tls``, the gateway's cert)."""

    def __init__(
        self,
        manager: JobManager,
        address: str,
        auth_token: str,
        max_upload_bytes: int,
        tls: ServerTls | None = None,
    ) -> None:
        self.tls = tls
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or DEFAULT_HOST
        self.requested_port = int(port)
        self.app = build_app(manager, auth_token, max_upload_bytes)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Bind, start serving, and return the bound port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        port = int(sock.getsockname()[1])
        files = {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key)} if self.tls else {}
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", **files)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="gateway-http", daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not self._server.started and waited < timeout_s and self._thread.is_alive():
            threading.Event().wait(0.05)
            waited += 0.05
        if not self._server.started:
            raise OSError(f"gateway: the HTTP bridge did not start on {self.host}:{port}")
        return port

    def stop(self) -> None:
        """Stop serving (open event streams are closed)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
