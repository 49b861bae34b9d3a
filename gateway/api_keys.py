"""API keys: their format, their quotas and their table in the job store (:class:`SqlKeyStore`).

A key is ``shk_<key id>_<secret>``: the key id (10 hexadecimal characters) is public - it names the key in
``synchuman keys list`` and ``revoke``, in logs and in quota errors - and the secret is 32 random bytes
(base64url). The store keeps only the key id and the SHA-256 of the whole key (hexadecimal): a key of 256
random bits needs no slow hash, and a stolen database yields no usable key. The key is shown once, when
``synchuman keys create`` makes it.

Each key has a :class:`Quota` (0: no limit): jobs unfinished at once, jobs created per UTC day (counted in
``api_key_usage``, so deleting jobs gives no new ones) and the photo's size. :func:`charge_job` checks the
first two in the transaction that stores the job (a PostgreSQL row lock on the key's usage row serializes the
submissions of one key across gateways); :class:`QuotaExceeded` names the limit and when to retry.

Tables (a schema version of :mod:`gateway.store_sql`): ``api_keys`` (key id, name, SHA-256, admin flag, the
three limits, creation and revocation times in ns since the epoch) and ``api_key_usage`` (key id, UTC day
``YYYY-MM-DD``, jobs created that day); ``jobs.owner_key`` is the key id a job was created with (NULL: the
shared token, or an open gateway).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from gateway.store import StoreError

if TYPE_CHECKING:
    from gateway.store_sql import Dialect, Session

#: A key as sent: ``shk_`` + key id + ``_`` + secret.
KEY_PATTERN = re.compile(r"shk_([0-9a-f]{10})_([A-Za-z0-9_-]{43})")
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{10}")
#: Longest key name.
MAX_NAME_CHARS = 100
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20}
#: The limits of ``--quota``: its names -> :class:`Quota` fields.
QUOTA_NAMES = {
    "concurrent": "max_concurrent_jobs",
    "daily": "max_jobs_per_day",
    "upload": "max_upload_bytes",
}


@dataclass(frozen=True)
class Quota:
    """A key's limits, 0 = none: ``max_concurrent_jobs`` (queued + running), ``max_jobs_per_day`` (created
    per UTC day), ``max_upload_bytes`` (the photo)."""

    max_concurrent_jobs: int = 0
    max_jobs_per_day: int = 0
    max_upload_bytes: int = 0

    def describe(self) -> str:
        """E.g. ``concurrent=2,daily=100,upload=none``."""
        return ",".join(f"{name}={getattr(self, field) or 'none'}" for name, field in QUOTA_NAMES.items())


def _size(text: str) -> int:
    match = re.fullmatch(r"([0-9]+)\s*([a-z]*)", text.strip().lower())
    if match is None or match[2] not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size: write e.g. 5000000, 5MB or 5MiB")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def parse_quota(text: str) -> Quota:
    """``concurrent=N,daily=N,upload=SIZE`` (any of them, comma-separated; SIZE in bytes or with kB, KiB,
    MB, MiB; ``none`` or 0: no limit; the ones not given: no limit); ValueError naming what is wrong."""
    quota = Quota()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        field = QUOTA_NAMES.get(name.strip().lower())
        if not sep or field is None:
            raise ValueError(f"{part!r}: write NAME=VALUE with NAME one of {', '.join(QUOTA_NAMES)}")
        value = value.strip().lower()
        if value == "none":
            number = 0
        elif field == "max_upload_bytes":
            number = _size(value)
        elif value.isdigit():
            number = int(value)
        else:
            raise ValueError(f"{part!r}: the value must be a whole number >= 0 or 'none'")
        quota = replace(quota, **{field: number})
    return quota


def key_sha256(key: str) -> str:
    """The stored form of a key: the SHA-256 of its text, hexadecimal."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id of a bearer token shaped like a key, else None."""
    match = KEY_PATTERN.fullmatch(token)
    return match[1] if match else None


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret): ``key_id``, ``name``, ``admin`` (sees and manages every job),
    ``quota``, ``create_ns`` / ``revoke_ns`` (ns since the epoch; ``revoke_ns`` 0: active), ``sha256`` (of
    the key) and ``jobs_today`` (jobs created this UTC day; filled by :meth:`SqlKeyStore.list`)."""

    key_id: str
    name: str
    admin: bool
    quota: Quota
    create_ns: int
    revoke_ns: int = 0
    sha256: str = ""
    jobs_today: int = 0

    @property
    def revoked(self) -> bool:
        return self.revoke_ns > 0


class KeyNotFound(StoreError):
    """No key has the id asked for."""


class QuotaExceeded(StoreError):
    """A key's limit refuses a job: ``metric`` (a :class:`Quota` field), the ``limit``, the ``used`` amount
    and ``retry_s``, the seconds after which retrying may succeed (0: never, as it is)."""

    def __init__(self, key_id: str, metric: str, limit: int, used: int, retry_s: float) -> None:
        self.key_id, self.metric, self.limit, self.used, self.retry_s = key_id, metric, limit, used, retry_s
        what = {
            "max_concurrent_jobs": f"{used} jobs of this key are queued or running (limit {limit})",
            "max_jobs_per_day": f"this key created {used - 1} jobs today (UTC; limit {limit} a day)",
            "max_upload_bytes": f"the photo has {used} bytes (this key's limit: {limit})",
        }[metric]
        super().__init__(f"quota of API key {key_id}: {what}")


def utc_day(now_s: float) -> str:
    """The UTC day of a time (s since the epoch), ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%d")


def seconds_to_next_day(now_s: float) -> float:
    """Seconds from ``now_s`` to the next UTC midnight (when the daily counts start again)."""
    now = datetime.fromtimestamp(now_s, UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


#: Seconds a client over its concurrent-jobs limit is asked to wait (a job takes minutes).
CONCURRENT_RETRY_S = 30.0


def charge_job(session: Session, key: ApiKey, unfinished_sql: str) -> None:
    """In the transaction that has just stored a job of ``key``: count it in today's usage and check the
    key's daily and concurrent limits (:class:`QuotaExceeded` rolls the transaction back). The usage upsert
    comes first: on PostgreSQL its row lock makes concurrent submissions of one key wait for each other, so
    the count that follows sees them. ``unfinished_sql``: the condition of an unfinished job."""
    now_s = time.time()
    (used,) = session.execute(
        "INSERT INTO api_key_usage (key_id, day, jobs) VALUES (?, ?, 1) ON CONFLICT (key_id, day) "
        "DO UPDATE SET jobs = api_key_usage.jobs + 1 RETURNING jobs",
        (key.key_id, utc_day(now_s)),
    ).fetchone()
    quota = key.quota
    if quota.max_jobs_per_day and used > quota.max_jobs_per_day:
        raise QuotaExceeded(
            key.key_id, "max_jobs_per_day", quota.max_jobs_per_day, used, seconds_to_next_day(now_s)
        )
    if quota.max_concurrent_jobs:
        (running,) = session.execute(
            f"SELECT COUNT(*) FROM jobs WHERE owner_key = ? AND {unfinished_sql}", (key.key_id,)
        ).fetchone()
        if running > quota.max_concurrent_jobs:
            raise QuotaExceeded(
                key.key_id,
                "max_concurrent_jobs",
                quota.max_concurrent_jobs,
                int(running) - 1,
                CONCURRENT_RETRY_S,
            )


_COLUMNS = (
    "key_id, name, admin, max_concurrent_jobs, max_jobs_per_day, max_upload_bytes, create_ns, revoke_ns, "
    "key_sha256"
)


def _key(row: tuple) -> ApiKey:
    return ApiKey(
        key_id=str(row[0]),
        name=str(row[1]),
        admin=bool(row[2]),
        quota=Quota(int(row[3]), int(row[4]), int(row[5])),
        create_ns=int(row[6]),
        revoke_ns=int(row[7] or 0),
        sha256=str(row[8]),
        jobs_today=int(row[9]) if len(row) > 9 and row[9] is not None else 0,
    )


class SqlKeyStore:
    """The ``api_keys`` table of a job store's database (``dialect``: see :mod:`gateway.store_sql`)."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    def create(self, name: str, quota: Quota, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key: its record and the key itself (shown once; only its SHA-256 is stored).
        ValueError for an empty or overlong name or a negative limit."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ValueError(f"a key's name must be 1 to {MAX_NAME_CHARS} printable characters")
        if min(quota.max_concurrent_jobs, quota.max_jobs_per_day, quota.max_upload_bytes) < 0:
            raise ValueError("quota limits must be >= 0 (0: no limit)")
        key_id = secrets.token_hex(5)
        token = f"shk_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, name, admin, quota, time.time_ns(), sha256=key_sha256(token))
        with self._dialect.transaction() as session:
            session.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    key_id,
                    name,
                    admin,
                    quota.max_concurrent_jobs,
                    quota.max_jobs_per_day,
                    quota.max_upload_bytes,
                    record.create_ns,
                    record.sha256,
                ),
            )
        return record, token

    def find(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), or None."""
        with self._dialect.reading() as session:
            row = session.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _key(row)

    def list(self) -> list[ApiKey]:
        """Every key, oldest first, with its jobs of this UTC day."""
        day = utc_day(time.time())
        columns = ", ".join(f"k.{c.strip()}" for c in _COLUMNS.split(","))
        with self._dialect.reading() as session:
            rows = session.execute(
                f"SELECT {columns}, u.jobs FROM api_keys k LEFT JOIN api_key_usage u "
                "ON u.key_id = k.key_id AND u.day = ? ORDER BY k.create_ns, k.key_id",
                (day,),
            ).fetchall()
        return [_key(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (at once, on every gateway of the store: keys are looked up on every call); a key
        revoked before keeps its first revocation time. :class:`KeyNotFound` when there is none."""
        with self._dialect.transaction() as session:
            session.execute(
                "UPDATE api_keys SET revoke_ns = ? WHERE key_id = ? AND revoke_ns IS NULL",
                (time.time_ns(), key_id),
            )
        found = self.find(key_id)
        if found is None:
            raise KeyNotFound(f"no API key with id {key_id!r}; see synchuman keys list")
        return found

    def exist(self) -> bool:
        """Whether any key was ever created (revoked ones count: revoking every key never opens a gateway)."""
        with self._dialect.reading() as session:
            return session.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None
