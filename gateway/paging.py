"""Pages of the job list: newest first, each page continued by a token naming the last job shown."""

from __future__ import annotations

import re

import grpc

from gateway.errors import JobError
from gateway.request_fields import JOB_ID_PATTERN, check_state
from gateway.store import Job, JobStore
from services.common.rpc_status import bad_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: A page token: creation time of the last job shown (ns since the epoch, hexadecimal, at most 2^63-1, the
#: stores' integer range), a dot, its id.
PAGE_TOKEN = re.compile(rf"([0-7]?[0-9a-f]{{1,15}})\.({JOB_ID_PATTERN})")


def page_token(job: Job) -> str:
    """The token of the page after ``job``: its creation time (ns, hexadecimal) and id, ``<ns>.<id>``."""
    return f"{job.create_time.seconds * 1_000_000_000 + job.create_time.nanos:x}.{job.id}"


def parse_page_token(token: str) -> tuple[int, str]:
    """``(create_time_ns, job_id)`` of a token matching :data:`PAGE_TOKEN` (every such token is a valid
    position in the list), or INVALID_ARGUMENT."""
    match = PAGE_TOKEN.fullmatch(token)
    if match is None:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is not a token this server issued; pass next_page_token of the previous page",
            bad_request("page_token", "malformed"),
        )
    return int(match[1], 16), match[2]


def list_page(
    store: JobStore, page_size: int, token: str, state: int, owner_key: str | None = None
) -> tuple[list[Job], str]:
    """One page of ``page_size`` jobs (0: :data:`DEFAULT_PAGE_SIZE`), only in ``state`` unless 0, only the API
    key ``owner_key``'s unless None, after the page of ``token`` (""; the first page); with the next page's
    token ("" on the last page)."""
    if page_size > MAX_PAGE_SIZE:
        raise JobError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"page_size is {page_size}; use 1 to {MAX_PAGE_SIZE}",
            bad_request("page_size", f"must be in [1, {MAX_PAGE_SIZE}]"),
        )
    check_state(state)
    size = page_size or DEFAULT_PAGE_SIZE
    before = parse_page_token(token) if token else None
    jobs = store.list(size + 1, state, before, owner_key)
    more = len(jobs) > size
    jobs = jobs[:size]
    return jobs, page_token(jobs[-1]) if more else ""
