"""The :class:`~gateway.artifacts.ArtifactStore` on S3 or any S3-compatible service (MinIO, Ceph RGW, R2,
...): object ``PREFIX/<job id>/<name>`` of one bucket, its SHA-256 in the object's user metadata
(``x-amz-meta-sha256``).

Endpoint, region and credentials come from boto3's usual sources: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/config``, instance and pod
roles. Uploads go through boto3's transfer manager (parts of :data:`~gateway.artifacts.CHUNK_BYTES` read from
the caller's buffer, so a large file is never copied whole); downloads stream the body (a part of it with an
S3 ``Range``). An S3 PUT (or a completed multipart upload) is atomic, so readers see the whole object or none.

With ``?presigned_downloads=SECONDS`` on the store URL (the gateway's ``--s3-presigned-downloads``),
:meth:`S3ArtifactStore.download_url` hands out presigned GET URLs valid that long, which the HTTP bridge
redirects downloads to: the bytes then go from S3 to the client directly, so S3's endpoint (as the gateway
reaches it) must be reachable by the clients too.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from urllib.parse import parse_qsl

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.response import StreamingBody

from gateway.artifacts import CHUNK_BYTES, ArtifactCorrupted, check_name, checked, is_whole
from gateway.request_fields import check_job_id
from services.common.stage_io import blob_header
from synchuman.stage_catalog import media_type
from synchuman.v1 import common_pb2

_MISSING = {"404", "NoSuchKey", "NotFound"}
#: The store URL's query parameter: lifetime of presigned download URLs in seconds (0: none handed out).
PRESIGNED_DOWNLOADS = "presigned_downloads"
#: The longest a presigned (SigV4) URL may be valid: 7 days, in seconds.
MAX_PRESIGN_S = 7 * 24 * 3600


def _presign_seconds(query: str) -> int:
    """The ``presigned_downloads`` seconds of a store URL's query (absent: 0); ``ValueError`` for another
    parameter or a number outside 0 to :data:`MAX_PRESIGN_S`."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {PRESIGNED_DOWNLOADS})
    if unknown:
        raise ValueError(f"unknown artifact store option(s) {unknown}: only {PRESIGNED_DOWNLOADS}=SECONDS")
    text = options.get(PRESIGNED_DOWNLOADS, "0")
    if not text.isdigit() or int(text) > MAX_PRESIGN_S:
        raise ValueError(f"{PRESIGNED_DOWNLOADS}={text!r}: give whole seconds from 0 to {MAX_PRESIGN_S}")
    return int(text)


def presigned_downloads_url(url: str, seconds: int) -> str:
    """The artifact store ``url`` with presigned downloads valid ``seconds``; ``ValueError`` when ``url`` is
    not an ``s3://`` store or ``seconds`` is out of range."""
    if not url.startswith("s3://"):
        raise ValueError(f"presigned downloads need an s3://BUCKET/PREFIX artifact store, not {url!r}")
    joined = f"{url}{'&' if '?' in url else '?'}{PRESIGNED_DOWNLOADS}={seconds}"
    _presign_seconds(joined.partition("?")[2])
    return joined


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _MISSING


def _pieces(body: StreamingBody, chunk_bytes: int) -> Iterator[bytes]:
    with body:
        yield from body.iter_chunks(chunk_bytes)


def _range(start: int, stop: int | None) -> str:
    """The S3 ``Range`` of bytes ``start`` to ``stop`` (exclusive; None: the end)."""
    return f"bytes={start}-{'' if stop is None else stop - 1}"


class S3ArtifactStore:
    """Files of jobs in ``s3://bucket/prefix``; see the module docstring. The bucket must exist: it is checked
    at construction (``ValueError`` naming the bucket, the endpoint and S3's answer otherwise).
    ``presigned_downloads_s``: lifetime of the URLs of :meth:`download_url` in seconds (0: none)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client=None,  # noqa: ANN001 - boto3 client
        presigned_downloads_s: int = 0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presigned_downloads_s = presigned_downloads_s
        self._client = client or boto3.client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5)
        )
        self._transfer = TransferConfig(
            multipart_threshold=8 * CHUNK_BYTES, multipart_chunksize=8 * CHUNK_BYTES, max_concurrency=4
        )
        try:
            self._client.head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            endpoint = self._client.meta.endpoint_url
            raise ValueError(
                f"artifact store s3://{bucket}/{self.prefix}: the bucket is not reachable at {endpoint} "
                f"({exc}); create it and check AWS_ENDPOINT_URL, AWS_REGION and the credentials"
            ) from exc

    @classmethod
    def at(cls, location: str) -> S3ArtifactStore:
        """The store at ``BUCKET[/PREFIX][?presigned_downloads=SECONDS]`` (an ``s3://`` URL's rest)."""
        path, _, query = location.partition("?")
        bucket, _, prefix = path.partition("/")
        return cls(bucket, prefix, presigned_downloads_s=_presign_seconds(query))

    def _key(self, job_id: str, name: str = "") -> str:
        parts = [self.prefix] if self.prefix else []
        parts.append(check_job_id(job_id))
        return "/".join(parts) + "/" + (check_name(name) if name else "")

    def put(self, job_id: str, name: str, data: bytes, media: str = "") -> common_pb2.BlobHeader:
        header = blob_header(name, media or media_type(name), data)
        self._client.upload_fileobj(
            io.BytesIO(data),
            self.bucket,
            self._key(job_id, name),
            ExtraArgs={"ContentType": header.media_type, "Metadata": {"sha256": header.sha256}},
            Config=self._transfer,
        )
        return header

    def has(self, job_id: str, name: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
            return True
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise

    def _open(self, job_id: str, name: str, part: str = "") -> tuple[StreamingBody, str]:
        """(streaming body, stored SHA-256) of the object, of its bytes ``part`` (an S3 ``Range``; empty: all
        of it); ``FileNotFoundError`` when missing."""
        key = self._key(job_id, name)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key, **({"Range": part} if part else {}))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{key}") from exc
            raise
        expected = answer.get("Metadata", {}).get("sha256", "")
        if not expected:
            answer["Body"].close()
            raise ArtifactCorrupted(job_id, name, "no SHA-256 stored with the object (not the gateway's)")
        return answer["Body"], expected

    def get(self, job_id: str, name: str) -> bytes:
        body, expected = self._open(job_id, name)
        with body:
            data = body.read()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactCorrupted(job_id, name)
        return data

    def chunks(
        self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES, start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]:
        whole = is_whole(start, stop)
        body, expected = self._open(job_id, name, "" if whole else _range(start, stop))
        pieces = _pieces(body, chunk_bytes)
        return checked(pieces, expected, job_id, name) if whole else pieces

    def download_url(self, job_id: str, name: str, filename: str) -> str:
        if not self.presigned_downloads_s:
            return ""
        params = {
            "Bucket": self.bucket,
            "Key": self._key(job_id, name),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        return self._client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.presigned_downloads_s
        )

    def remove_job(self, job_id: str) -> int:
        removed = 0
        listing = self._client.get_paginator("list_objects_v2")
        for page in listing.paginate(Bucket=self.bucket, Prefix=self._key(job_id)):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                delete = {"Objects": keys, "Quiet": True}
                answer = self._client.delete_objects(Bucket=self.bucket, Delete=delete)
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise OSError(f"S3 refused to delete {first.get('Key')}: {first.get('Message')}")
                removed += len(keys)
        return removed
