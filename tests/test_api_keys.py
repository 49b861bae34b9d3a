"""API keys in the job store (SQLite and a real PostgreSQL server): hashed round trip, revocation, quota
charging in the job's transaction (simultaneous submissions included), per-key idempotency keys and job
lists; the key format and ``--quota``; the ``synchuman keys`` command; two gateways on one PostgreSQL store
(keys, ownership and revocation hold on both)."""

from __future__ import annotations

import contextlib
import io
import itertools
import threading
import time

import psycopg
import pytest
from real_servers import postgres_server
from test_api_keys_tenants import SHARED, Caller, grpc_ops
from test_gateway import Stack

from gateway.api_keys import (
    KeyNotFound,
    Quota,
    QuotaExceeded,
    key_id_of,
    key_sha256,
    parse_quota,
    seconds_to_next_day,
    utc_day,
)
from gateway.store import Event, Job, open_job_store
from synchuman.v1 import reconstruction_pb2
from synchuman_cli.main import main as synchuman

_names = itertools.count()


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def _fresh_database(base: str) -> str:
    """A new empty database on the test server; its URL."""
    name = f"keys{next(_names)}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/jobs.sqlite3"
    else:
        url = _fresh_database(request.getfixturevalue("postgres_url"))
    opened = open_job_store(url, tmp_path)
    yield opened
    opened.close()


def _job(job_id: str, key: str = "") -> tuple[Job, Event]:
    job = Job(id=job_id, state=reconstruction_pb2.JOB_STATE_QUEUED, idempotency_key=key)
    job.create_time.FromNanoseconds(time.time_ns())
    return job, Event(sequence=1, state=reconstruction_pb2.JOB_STATE_QUEUED)


def test_keys_round_trip_hashed_and_revoked(store):
    keys = store.api_keys
    assert not keys.exist()
    record, token = keys.create("acme", Quota(2, 10, 1 << 20))
    admin, admin_token = keys.create("ops", Quota(), admin=True)
    assert key_id_of(token) == record.key_id and key_id_of(admin_token) == admin.key_id
    assert keys.exist() and len(token) == len("shk_") + 10 + 1 + 43
    found = keys.find(record.key_id)
    assert found.sha256 == key_sha256(token) and token not in repr(found)
    assert (found.name, found.admin, found.revoked) == ("acme", False, False)
    assert found.quota == Quota(2, 10, 1 << 20)
    assert keys.find(admin.key_id).admin
    assert keys.find("0123456789") is None
    revoked = keys.revoke(record.key_id)
    assert revoked.revoked and keys.revoke(record.key_id).revoke_ns == revoked.revoke_ns  # first time kept
    assert [k.key_id for k in keys.list()] == [record.key_id, admin.key_id]
    with pytest.raises(KeyNotFound):
        keys.revoke("0123456789")
    with pytest.raises(ValueError):
        keys.create("  ", Quota())
    with pytest.raises(ValueError):
        keys.create("x", Quota(max_concurrent_jobs=-1))
    # the database holds the hash, never the key
    assert all(token not in str(k) for k in keys.list())


def test_jobs_belong_to_their_key_with_their_own_idempotency_keys(store):
    a, _ = store.api_keys.create("a", Quota())
    b, _ = store.api_keys.create("b", Quota())
    store.create(*_job("ja", key="order-1"), owner=a)
    store.create(*_job("jb", key="order-1"), owner=b)  # the same idempotency key: another job
    again, created = store.create(*_job("ja2", key="order-1"), owner=a)
    assert not created and again.id == "ja"
    store.create(*_job("shared", key="order-1"))  # the shared token's: unscoped, as before keys
    assert store.find_by_key("order-1", a.key_id).id == "ja" and store.find_by_key("order-1").id == "shared"
    assert store.get_owned("ja", a.key_id).id == "ja" and store.get_owned("ja", b.key_id) is None
    assert store.get_owned("shared", a.key_id) is None
    assert [j.id for j in store.list(10, owner_key=a.key_id)] == ["ja"]
    assert [j.id for j in store.list(10, owner_key=b.key_id)] == ["jb"]
    assert {j.id for j in store.list(10)} == {"ja", "jb", "shared"}
    assert [k.jobs_today for k in store.api_keys.list()] == [1, 1]


def test_quota_is_charged_in_the_jobs_transaction(store):
    key, _ = store.api_keys.create("small", Quota(max_concurrent_jobs=2, max_jobs_per_day=3))
    store.create(*_job("j1"), owner=key)
    store.create(*_job("j2"), owner=key)
    with pytest.raises(QuotaExceeded) as concurrent:
        store.create(*_job("j3"), owner=key)
    assert concurrent.value.metric == "max_concurrent_jobs" and concurrent.value.retry_s > 0
    assert store.get("j3") is None and store.api_keys.list()[0].jobs_today == 2  # nothing stored or charged
    finished = store.get("j1")
    finished.state = reconstruction_pb2.JOB_STATE_SUCCEEDED
    store.save(finished)
    store.create(*_job("j3"), owner=key)  # a place is free again
    store.delete("j1")  # deleting a job gives no new one today
    with pytest.raises(QuotaExceeded) as daily:
        store.create(*_job("j4"), owner=key)
    assert daily.value.metric == "max_jobs_per_day" and daily.value.limit == 3
    assert 0 < daily.value.retry_s <= 86400 and store.get("j4") is None


def test_quota_text_and_days():
    assert parse_quota("concurrent=2, daily=100,upload=5MiB") == Quota(2, 100, 5 << 20)
    assert parse_quota("daily=5,upload=none") == Quota(0, 5, 0)
    assert parse_quota("upload=20kB") == Quota(0, 0, 20_000) and parse_quota("") == Quota()
    for bad in ("speed=1", "daily", "daily=-1", "upload=5 parsecs"):
        with pytest.raises(ValueError):
            parse_quota(bad)
    midnight = 1_765_152_000  # 2025-12-08T00:00:00Z
    assert utc_day(midnight - 1) == "2025-12-07" and utc_day(midnight) == "2025-12-08"
    assert seconds_to_next_day(midnight - 90) == pytest.approx(90)
    assert key_id_of("shk_0123456789_" + "A" * 43) == "0123456789" and key_id_of("s3cret") is None


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = synchuman(list(args))
    return status, out.getvalue(), err.getvalue()


def test_keys_command_creates_lists_and_revokes(tmp_path):
    store_args = ("keys", "--data-dir", str(tmp_path))
    status, key, told = _cli(*store_args, "create", "--name", "acme", "--quota", "concurrent=1,daily=5")
    key = key.strip()
    assert status == 0 and key_id_of(key) and "not shown again" in told and key not in told
    status, listing, _ = _cli(*store_args, "list")
    assert status == 0 and key_id_of(key) in listing and "concurrent=1,daily=5,upload=none" in listing
    assert key not in listing
    assert _cli(*store_args, "revoke", key_id_of(key))[0] == 0
    assert "REVOKED" in _cli(*store_args, "list")[1]
    status, _, error = _cli(*store_args, "revoke", "0123456789")
    assert status == 2 and "no API key" in error
    status, _, error = _cli(*store_args, "create", "--name", "x", "--quota", "parallel=2")
    assert status == 2 and "--quota" in error and "concurrent" in error
    opened = open_job_store("", tmp_path)  # what the gateway reads: --data-dir's SQLite file
    try:
        assert opened.api_keys.find(key_id_of(key)).revoked
    finally:
        opened.close()


def test_simultaneous_submissions_of_one_key_never_overshoot_its_limit(store):
    """Eight jobs of a key with room for two, stored at the same moment (several gateways' threads): exactly
    two are stored (PostgreSQL: the usage row's lock serializes them; SQLite: one writer at a time)."""
    key, _ = store.api_keys.create("burst", Quota(max_concurrent_jobs=2))
    start, outcomes = threading.Barrier(8), []

    def submit(i: int) -> None:
        start.wait()
        try:
            store.create(*_job(f"burst{i}"), owner=key)
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["refused"] * 6 + ["stored"] * 2
    assert len(store.list(10, owner_key=key.key_id)) == 2 and store.api_keys.list()[0].jobs_today == 2


def test_keys_and_ownership_hold_on_every_gateway_of_a_postgresql_store(postgres_url, tmp_path):
    """Two gateways on one PostgreSQL job store: a key made once works on both, its job is its own on both,
    and a revocation (``synchuman keys --job-store URL revoke``) holds on both from the next call."""
    url = _fresh_database(postgres_url)
    first = Stack(tmp_path / "g1", http_address="127.0.0.1:0", auth_token=SHARED, database_url=url)
    second = Stack(tmp_path / "g2", http_address="127.0.0.1:0", auth_token=SHARED, database_url=url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert synchuman(["keys", "--job-store", url, "create", "--name", "a"]) == 0
        assert synchuman(["keys", "--job-store", url, "create", "--name", "b"]) == 0
    key_a, key_b = out.getvalue().split()
    a1, a2, b2 = Caller(first, key_a), Caller(second, key_a), Caller(second, key_b)
    try:
        job_id = a1.submit_grpc()
        assert a2.http.get(f"/v1/jobs/{job_id}").status_code == 200
        assert b2.http.get(f"/v1/jobs/{job_id}").status_code == 404
        assert grpc_ops(b2.grpc, job_id)["get"]() == "NOT_FOUND"
        with contextlib.redirect_stderr(io.StringIO()):
            assert synchuman(["keys", "--job-store", url, "revoke", key_a.split("_")[1]]) == 0
        assert a1.http.get("/v1/jobs").status_code == 401 and a2.http.get("/v1/jobs").status_code == 401
        assert grpc_ops(a2.grpc, job_id)["get"]() == "UNAUTHENTICATED"
    finally:
        for caller in (a1, a2, b2):
            caller.close()
        first.close()
        second.close()
