"""The :class:`~gateway.artifacts.ArtifactStore` on S3 or any S3-compatible service (MinIO, Ceph RGW, R2,
...): object ``PREFIX/<job id>/<name>`` of one bucket, its SHA-256 in the object's user metadata
(``x-amz-meta-sha256``).

Endpoint, region and credentials come from boto3's usual sources: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/config``, instance and pod
roles. Uploads go through boto3's transfer manager (parts of :data:`~gateway.artifacts.CHUNK_BYTES` read from
the caller's buffer, so a large file is never copied whole); downloads stream the body. An S3 PUT (or a
completed multipart upload) is atomic, so readers see the whole object or none.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.response import StreamingBody

from gateway.artifacts import CHUNK_BYTES, ArtifactCorrupted, check_job_id, check_name, checked, media_type
from services.common.stage_io import blob_header
from synchuman.v1 import common_pb2

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in _MISSING


def _pieces(body: StreamingBody, chunk_bytes: int) -> Iterator[bytes]:
    with body:
        yield from body.iter_chunks(chunk_bytes)


class S3ArtifactStore:
    """Files of jobs in ``s3://bucket/prefix``; see the module docstring. The bucket must exist: it is checked
    at construction (``ValueError`` naming the bucket, the endpoint and S3's answer otherwise)."""

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:  # noqa: ANN001 - boto3 client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
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

    def _open(self, job_id: str, name: str) -> tuple[StreamingBody, str]:
        """(streaming body, stored SHA-256) of the object; ``FileNotFoundError`` when missing."""
        key = self._key(job_id, name)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
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

    def chunks(self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        body, expected = self._open(job_id, name)
        return checked(_pieces(body, chunk_bytes), expected, job_id, name)

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
