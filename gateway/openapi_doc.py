"""OpenAPI pieces of the HTTP bridge that FastAPI cannot infer: the error body, the error responses of each
route, the answers of a download (:mod:`gateway.http_download`), and the upload request with its ``options``
field typed as the ``JobOptions`` JSON object.

The option ranges come from the core option classes (:class:`~synchuman.options.Stage1Options`,
:class:`~synchuman.options.Stage2Options`), the enums from the protos, so a request valid
under this schema is one the gateway accepts (apart from the photo bytes, which a schema cannot describe).
"""

from __future__ import annotations

from typing import Any

from gateway.upload_checks import KEY_PATTERN, MAX_KEY_CHARS
from gateway.webhooks_policy import MAX_URL_CHARS
from synchuman.options import TARGET_FACES, Range, Stage1Options, Stage2Options
from synchuman.preprocess.segment import SEGMENTER_NAME
from synchuman.v1 import common_pb2

#: What each error status of the bridge means (the body is always :data:`ERROR_SCHEMA`).
ERROR_MEANINGS = {
    400: "Invalid request (INVALID_ARGUMENT): the message and details name the field and what to send",
    401: "Missing, wrong or revoked bearer token or API key (UNAUTHENTICATED)",
    404: "No such job or file (NOT_FOUND); another API key's job answers the same",
    409: "The job is not in a state that allows this (FAILED_PRECONDITION), e.g. deleting a running job",
    413: "The upload is larger than the server's limit",
    416: "No byte of the Range lies in the file (OUT_OF_RANGE); Content-Range: bytes */SIZE gives its size",
    429: "Too many pending jobs, or over the API key's quota (RESOURCE_EXHAUSTED; QuotaFailure names the "
    "limit); retry after the Retry-After header's seconds (none when waiting cannot help: a too large photo)",
    503: "The gateway or a stage is unavailable (UNAVAILABLE)",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "gRPC status code name, e.g. INVALID_ARGUMENT"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "google.rpc details (BadRequest, ErrorInfo, RetryInfo ...) as JSON, "
                    "each with its message type in @type",
                    "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
                },
            },
        }
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for ``statuses`` (plus 400 and 401, which every ``/v1`` route can answer)."""
    return {
        status: {
            "description": ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in sorted({400, 401, *statuses})
    }


def job_links() -> dict[str, dict[str, Any]]:
    """OpenAPI links from a response holding ``{"job": Job}`` to the operations that take its id (so that
    client generators and stateful API fuzzers follow a submitted job: get, events, the GLB, cancel,
    delete)."""
    job_id = {"job_id": "$response.body#/job/id"}
    links = {
        "GetJob": ("get_job", job_id, "the job's state, progress and files"),
        "WatchJobEvents": ("job_events", job_id, "the job's events as server-sent events"),
        "DownloadModel": (
            "get_artifact",
            {**job_id, "name": "person.glb"},
            "the GLB, once the job succeeded",
        ),
        "CancelJob": ("cancel_job", job_id, "cancel the job"),
        "DeleteJob": ("delete_job", job_id, "delete the job once it has ended"),
    }
    return {
        name: {"operationId": operation, "parameters": parameters, "description": description}
        for name, (operation, parameters, description) in links.items()
    }


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    """An OpenAPI response header."""
    return {"description": description, "schema": {"type": kind}}


def download_responses() -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` of ``GET /v1/jobs/{job_id}/artifacts/{name}``: the file (200), the part that
    ``Range`` names (206), not modified (304), a presigned S3 URL to fetch it from (307) and the errors."""
    binary = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    validators = {
        "ETag": _header("the file's SHA-256 (hex) in double quotes"),
        "Accept-Ranges": _header("bytes"),
    }
    sent = {**validators, "Content-Length": _header("bytes in this answer", "integer")}
    errors = error_responses(404, 416)
    errors[416]["headers"] = {"Content-Range": _header("bytes */SIZE, SIZE: the file's size in bytes")}
    return {
        200: {
            "description": "The file, streamed from the artifact store",
            "content": binary,
            "headers": sent,
        },
        206: {
            "description": "The bytes the Range header names",
            "content": binary,
            "headers": {**sent, "Content-Range": _header("bytes FIRST-LAST/SIZE (offsets in bytes)")},
        },
        304: {"description": "Not modified: If-None-Match names the ETag", "headers": validators},
        307: {
            "description": "Fetch the file from Location, a presigned S3 URL valid a short time (a gateway "
            "started with --s3-presigned-downloads)",
            "headers": {**validators, "Location": _header("the presigned URL")},
        },
        **errors,
    }


def _ranged(ranges: tuple[Range, ...], kinds: dict[str, str]) -> dict[str, Any]:
    """JSON-schema properties of ranged options (``kinds``: option -> ``integer`` or ``number``)."""
    properties: dict[str, Any] = {}
    for name, low, high, allowed in ranges:
        kind = kinds[name]
        properties[name] = {"type": kind, "minimum": low, "maximum": high, "description": allowed}
    return properties


def _enum_names(enum: Any) -> list[str]:
    return [name for name in enum.keys() if not name.endswith("_UNSPECIFIED")]


def job_options_schema(profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``JobOptions`` message as JSON (proto field names), with the accepted ranges and enum names;
    ``profiles``: the names ``profile`` accepts (empty: any string)."""
    multiview = _ranged(
        Stage1Options.RANGES, {"seed": "integer", "steps": "integer", "guidance_scale": "number"}
    )
    kinds = {name: "integer" for name, *_ in Stage2Options.RANGES}
    kinds.update(guidance_scale="number", simplify_ratio="number")
    kinds.update(target_faces="integer")
    stage2 = _ranged((*Stage2Options.RANGES, TARGET_FACES), kinds)
    stage2["outputs"] = {
        "type": "array",
        "items": {"type": "string", "enum": _enum_names(common_pb2.OutputFormat)},
        "description": "extra outputs besides the GLB",
    }
    stage2["bake_mode"] = {"type": "string", "enum": _enum_names(common_pb2.BakeMode)}
    stage2["quad_remesh"] = {
        "type": "boolean",
        "description": "quad-dominant remesh (OBJ and USDZ keep quads)",
    }
    preprocess = {
        "segmenter": {
            "type": "string",
            "pattern": f"^((rembg:)?{SEGMENTER_NAME.pattern})?$",
            "description": "segmentation model name, e.g. u2netp",
        },
        "ignore_alpha": {"type": "boolean"},
        "alpha_matting": {"type": "boolean"},
    }
    # "reconstruction": the wire name of the stage-2 options
    groups = {"preprocess": preprocess, "multiview": multiview, "reconstruction": stage2}
    properties: dict[str, Any] = {
        group: {"type": "object", "additionalProperties": False, "properties": fields}
        for group, fields in groups.items()
    }
    # a face count is given one way: decimation ratio or target
    properties["reconstruction"]["not"] = {"required": ["simplify_ratio", "target_faces"]}
    profile: dict[str, Any] = {"type": "string", "description": "named output profile (GET /v1/profiles)"}
    if profiles:
        profile["enum"] = ["", *profiles]
    properties["profile"] = profile
    return {
        "type": "object",
        "description": "synchuman.v1.JobOptions as JSON; unset fields take the named profile's options, "
        "then the server defaults",
        "additionalProperties": False,
        "properties": properties,
    }


def profiles_responses() -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` of ``GET /v1/profiles``: the ``ListProfilesResponse`` message as JSON (where
    64-bit integers, the seeds, are decimal strings)."""
    options = job_options_schema()
    for group in ("multiview", "reconstruction"):
        seed = options["properties"][group]["properties"]["seed"]
        seed.update(type="string", pattern="^[0-9]{1,19}$")
        del seed["minimum"], seed["maximum"]
    profile = {
        "type": "object",
        "required": ["name", "description"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "options": {**options, "description": "the options the profile sets"},
            "effective_options": {
                **options,
                "description": "every option a job naming the profile runs with (the server defaults where "
                "the profile sets none; stage 2 on a CPU uses smaller visibility_views and texture_size)",
            },
        },
    }
    body = {"type": "object", "properties": {"profiles": {"type": "array", "items": profile}}}
    return {
        200: {
            "description": "The profiles, standard first",
            "content": {"application/json": {"schema": body}},
        },
        **error_responses(),
    }


#: Media types of a raw photo body (the gateway reads any ``image/*`` and identifies the format from the
#: bytes).
RAW_UPLOAD_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")


def callback_url_schema(webhooks: bool) -> dict[str, Any]:
    """The job's webhook URL (form field or query parameter; :mod:`gateway.webhooks_policy` says what is
    refused); ``webhooks``: whether the gateway sends any (else only the empty string is valid)."""
    if not webhooks:
        return {"type": "string", "maxLength": 0, "description": "this gateway sends no webhooks"}
    return {
        "type": "string",
        "maxLength": MAX_URL_CHARS,
        "pattern": "^(https?://[^@#\\s]+)?$",
        "description": "http(s) URL the gateway POSTs the job's end event to (Standard Webhooks signature; "
        "retried for 24 h): its host must be on the gateway's allow-list and resolve to public addresses "
        "(400 otherwise); no user name or password",
    }


def upload_doc(profiles: tuple[str, ...] = (), webhooks: bool = False) -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/jobs``: a multipart form (``image``, ``options``, ``idempotency_key``,
    ``callback_url``) or the raw photo as the body (``callback_url`` then as a query parameter);
    ``profiles``: the profile names the gateway knows; ``webhooks``: whether it sends webhooks."""
    callback_url = callback_url_schema(webhooks)
    photo = {"type": "string", "format": "binary", "description": "the photo: JPEG, PNG, WebP ..."}
    return {
        "parameters": [{"name": "callback_url", "in": "query", "required": False, "schema": callback_url}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": photo,
                            "options": job_options_schema(profiles),
                            "idempotency_key": {
                                "type": "string",
                                "maxLength": MAX_KEY_CHARS,
                                "pattern": f"^{KEY_PATTERN.pattern}$",
                            },
                            "callback_url": callback_url,
                        },
                    },
                    "encoding": {
                        "image": {"contentType": ", ".join(RAW_UPLOAD_TYPES[:-1])},
                        "options": {"contentType": "application/json"},
                    },
                },
                **{media_type: {"schema": photo} for media_type in RAW_UPLOAD_TYPES},
            },
        },
    }
