"""The job stores (SQLite and PostgreSQL) against the same contract, leases included, and their schema
migrations. PostgreSQL is a real server started by the tests (tests/real_servers.py), never a mock.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

import psycopg
import pytest
from real_servers import free_port, postgres_server

from gateway import store_postgres, store_sqlite
from gateway.store import (
    Event,
    InvalidJobState,
    Job,
    JobNotFound,
    LeaseLost,
    StoreUnavailable,
    open_job_store,
)
from gateway.store_sql import current_version, migrate
from synchuman.v1 import reconstruction_pb2

_names = itertools.count()
#: The schema version a store is migrated to (both dialects have the same migrations).
LATEST = len(store_sqlite.MIGRATIONS)


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def _fresh_database(base_url: str) -> str:
    """A new empty database on the test server; its URL."""
    name = f"t{next(_names)}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.sqlite3"
    return _fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url, tmp_path):
    opened = open_job_store(store_url, tmp_path)
    yield opened
    opened.close()


def make_job(
    job_id: str, created_s: int, key: str = "", state: int = reconstruction_pb2.JOB_STATE_QUEUED
) -> Job:
    job = Job(id=job_id, state=state, idempotency_key=key)
    job.create_time.FromNanoseconds(created_s * 1_000_000_000)
    return job


def first_event() -> Event:
    return Event(sequence=1, state=reconstruction_pb2.JOB_STATE_QUEUED)


def test_trace_context_is_stored_with_the_job(store):
    assert len(store_postgres.MIGRATIONS) == LATEST
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    store.create(make_job("traced", 100), first_event(), trace_context=traceparent)
    store.create(make_job("plain", 101), first_event(), lease_owner="gw", lease_s=30.0)
    assert store.trace_context("traced") == traceparent
    assert store.trace_context("plain") == "" and store.trace_context("missing") == ""


def test_records_events_paging_and_deletion(store):
    for i in range(5):
        store.create(make_job(f"job{i}", 100 + i, key=f"k{i}"), first_event())
    again, created = store.create(make_job("other", 200, key="k2"), first_event())
    assert not created and again.id == "job2"
    assert store.find_by_key("k3").id == "job3" and store.find_by_key("nope") is None

    job = store.get("job1")
    job.state = reconstruction_pb2.JOB_STATE_SUCCEEDED
    store.save(job, Event(sequence=2, state=job.state))
    assert [e.sequence for e in store.events("job1")] == [1, 2]
    assert [e.sequence for e in store.events("job1", after_sequence=1)] == [2]
    assert store.last_sequence("job1") == 2 and store.last_sequence("missing") == 0
    # a sequence number is written once, whoever writes it
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.save(job, Event(sequence=2, state=job.state))

    first = store.list(2)
    assert [j.id for j in first] == ["job4", "job3"]
    older = store.list(10, before=(103 * 1_000_000_000, "job3"))
    assert [j.id for j in older] == ["job2", "job1", "job0"]
    assert [j.id for j in store.list(10, state=reconstruction_pb2.JOB_STATE_SUCCEEDED)] == ["job1"]
    assert store.count_by_state() == {
        reconstruction_pb2.JOB_STATE_QUEUED: 4,
        reconstruction_pb2.JOB_STATE_SUCCEEDED: 1,
    }
    assert [j.id for j in store.unfinished()] == ["job0", "job2", "job3", "job4"]
    assert store.finished_before(102 * 1_000_000_000, 10) == ["job1"]
    store.delete("job1")
    with pytest.raises(JobNotFound):
        store.delete("job1")
    with pytest.raises(InvalidJobState):
        store.delete("job0")  # queued: cancel it first
    assert store.get("job1") is None and store.events("job1") == []
    assert store.get("job0").id == "job0"
    with pytest.raises(JobNotFound):
        store.save(make_job("missing", 1))
    store.ping()
    assert store.schema_version() == LATEST


def test_leases_hand_each_job_to_one_owner_and_expire(store):
    for i in range(4):
        store.create(make_job(f"job{i}", 100 + i), first_event())
    a = store.acquire("gw-a", 30.0, 3)
    assert [j.id for j in a] == ["job0", "job1", "job2"]
    b = store.acquire("gw-b", 0.3, 10)
    assert [j.id for j in b] == ["job3"]
    assert store.acquire("gw-b", 0.3, 10) == []
    assert store.lease_owner("job0") == "gw-a" and store.lease_owner("job3") == "gw-b"

    job = store.get("job0")
    job.state = reconstruction_pb2.JOB_STATE_RUNNING
    store.save(job, Event(sequence=2, state=job.state), lease_owner="gw-a")
    with pytest.raises(LeaseLost):
        store.save(job, Event(sequence=3, state=job.state), lease_owner="gw-b")
    assert store.last_sequence("job0") == 2  # the refused write left no event behind

    time.sleep(0.5)  # gw-b's lease of job3 expires; a late heartbeat of gw-b still gets it back...
    assert store.lease_owner("job3") == ""
    assert store.renew("gw-b", 0.3).held == {"job3"}
    time.sleep(0.5)  # ...but once gw-a has taken it, gw-b has lost it
    assert [j.id for j in store.acquire("gw-a", 30.0, 10)] == ["job3"]
    assert store.renew("gw-b", 0.3).held == frozenset()
    renewal = store.renew("gw-a", 30.0)
    assert renewal.held == {"job0", "job1", "job2", "job3"} and renewal.cancel == frozenset()

    assert store.request_cancel("job1")
    assert store.renew("gw-a", 30.0).cancel == {"job1"}
    assert store.claim("gw-b", "job2", 30.0) is None  # held by gw-a
    store.release("gw-a", "job2")
    assert store.claim("gw-b", "job2", 30.0).id == "job2"
    assert store.claim("gw-b", "job2", 30.0) is None  # held (by the caller itself, here)
    assert store.release_all("gw-b") == 1 and store.lease_owner("job2") == ""

    done = store.get("job0")
    done.state = reconstruction_pb2.JOB_STATE_SUCCEEDED
    store.save(done, lease_owner="gw-a")
    assert not store.request_cancel("job0")  # finished: nothing to cancel
    store.release("gw-a", "job0")
    assert store.claim("gw-b", "job0", 30.0) is None  # finished jobs are never leased again


def test_created_job_can_start_leased(store):
    store.create(make_job("mine", 100), first_event(), lease_owner="gw-a", lease_s=30.0)
    store.create(make_job("free", 101), first_event())
    assert store.lease_owner("mine") == "gw-a"
    assert [j.id for j in store.acquire("gw-b", 30.0, 10)] == ["free"]


def test_a_job_released_with_run_after_waits_unleased_until_due(store):
    """A retry's back-off: released with ``run_after``, the job is held by nobody, acquired by nobody until
    it is due (then by any gateway), can still be claimed for a cancellation, and can be made due early."""
    store.create(make_job("later", 100), first_event())
    store.create(make_job("now", 101), first_event())
    assert store.next_due_s() is None
    assert [j.id for j in store.acquire("gw-a", 30.0, 1)] == ["later"]
    store.release("gw-a", "later", run_after_s=0.6)
    assert store.lease_owner("later") == ""
    assert 0.3 < store.next_due_s() <= 0.6
    assert [j.id for j in store.acquire("gw-b", 30.0, 10)] == ["now"]  # "later" is not due yet
    assert store.acquire("gw-b", 30.0, 10) == []
    time.sleep(0.7)
    assert store.next_due_s() is None
    assert [j.id for j in store.acquire("gw-b", 30.0, 10)] == ["later"]

    store.release("gw-b", "later", run_after_s=60.0)
    assert store.acquire("gw-a", 30.0, 10) == [] and store.next_due_s() > 50
    assert store.make_due(["later", "nope"]) == 1 and store.make_due(["later"]) == 0
    assert [j.id for j in store.acquire("gw-a", 30.0, 10)] == ["later"]

    store.release("gw-a", "later", run_after_s=60.0)
    assert store.claim("gw-c", "later", 30.0).id == "later"  # a cancellation does not wait for the retry


def test_postgres_notifies_listeners_of_jobs_to_take(postgres_url, tmp_path):
    """Submitting, releasing and making due wake the other gateways' listeners; renewing a lease does not."""
    url = _fresh_database(postgres_url)
    writer, reader = open_job_store(url, tmp_path), open_job_store(url, tmp_path)
    woken = threading.Semaphore(0)
    listener = reader.listen(woken.release)
    try:
        assert listener.listening.wait(10) and woken.acquire(timeout=5)  # the wake-up after connecting
        started = time.monotonic()
        writer.create(make_job("job1", 100), first_event())
        assert woken.acquire(timeout=5)
        latency_s = time.monotonic() - started
        writer.acquire("gw-a", 30.0, 1)
        writer.renew("gw-a", 30.0)
        assert not woken.acquire(timeout=0.3)
        writer.release("gw-a", "job1", run_after_s=60.0)
        assert woken.acquire(timeout=5)
        writer.make_due(["job1"])
        assert woken.acquire(timeout=5)
        print(f"\nNOTIFY reached the other store's listener {latency_s * 1000:.1f} ms after the commit")
    finally:
        listener.close()
        writer.close()
        reader.close()


def test_concurrent_acquirers_never_share_a_job(store_url, tmp_path):
    """Four gateways (own connections) acquiring at once from 40 jobs: every job to exactly one of them."""
    stores = [open_job_store(store_url, tmp_path) for _ in range(4)]
    try:
        for i in range(40):
            stores[0].create(make_job(f"job{i:02d}", 100 + i), first_event())
        taken: dict[str, list[str]] = {}
        barrier = threading.Barrier(len(stores))

        def take(index: int) -> None:
            barrier.wait()
            ids = []
            while batch := stores[index].acquire(f"gw-{index}", 30.0, 3):
                ids.extend(j.id for j in batch)
            taken[f"gw-{index}"] = ids

        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        every = sorted(itertools.chain.from_iterable(taken.values()))
        assert every == [f"job{i:02d}" for i in range(40)], taken
    finally:
        for opened in stores:
            opened.close()


def _v1_job_rows(insert) -> None:
    """Two jobs and an event written in the version-1 layout (before leases existed)."""
    done = make_job("old-done", 100, key="k", state=reconstruction_pb2.JOB_STATE_SUCCEEDED)
    for job in (done, make_job("old-queued", 101)):
        insert(
            "INSERT INTO jobs (id, state, create_ns, idempotency_key, job) VALUES ({p}, {p}, {p}, {p}, {p})",
            (job.id, job.state, job.create_time.ToNanoseconds(), job.idempotency_key or None,
             job.SerializeToString()),
        )
    insert(
        "INSERT INTO events (job_id, sequence, event) VALUES ({p}, {p}, {p})",
        ("old-queued", 1, first_event().SerializeToString()),
    )


def _check_upgraded(store) -> None:
    assert store.schema_version() == LATEST
    assert store.find_by_key("k").id == "old-done"
    assert [e.sequence for e in store.events("old-queued")] == [1]
    assert [j.id for j in store.acquire("gw", 30.0, 10)] == ["old-queued"]  # leases work on old rows


@pytest.mark.parametrize("old", [1, 2])
def test_sqlite_upgrades_from_an_older_version(tmp_path, old):
    path = tmp_path / "jobs.sqlite3"
    dialect = store_sqlite.SqliteDialect(path)
    assert migrate(dialect, target=old) == 0
    with dialect.reading() as session:
        assert current_version(dialect, session) == old
    dialect.close()
    db = sqlite3.connect(path, isolation_level=None)
    if old == 1:
        db.execute("DROP TABLE schema_version")  # the files written before versioning have no version table
    _v1_job_rows(lambda sql, args: db.execute(sql.format(p="?"), args))
    db.close()
    store = open_job_store(f"sqlite:///{path}", tmp_path)
    try:
        _check_upgraded(store)
    finally:
        store.close()
    reopened = open_job_store(f"sqlite:///{path}", tmp_path)  # migrating again is a no-op
    assert reopened.schema_version() == LATEST
    reopened.close()


@pytest.mark.parametrize("old", [1, 2])
def test_postgres_upgrades_from_an_older_version(postgres_url, tmp_path, old):
    url = _fresh_database(postgres_url)
    dialect = store_postgres.PostgresDialect(url)
    assert migrate(dialect, target=old) == 0
    with dialect.reading() as session:
        assert current_version(dialect, session) == old
    dialect.close()
    with psycopg.connect(url, autocommit=True) as conn:
        _v1_job_rows(lambda sql, args: conn.execute(sql.format(p="%s"), args))
    store = open_job_store(url, tmp_path)
    try:
        _check_upgraded(store)
    finally:
        store.close()


def test_postgres_gateways_starting_together_migrate_once(postgres_url, tmp_path):
    url = _fresh_database(postgres_url)
    opened, errors = [], []

    def start() -> None:
        try:
            opened.append(open_job_store(url, tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors and len(opened) == 4
        assert all(s.schema_version() == LATEST for s in opened)
    finally:
        for store in opened:
            store.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    open_job_store(f"sqlite:///{path}", tmp_path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        open_job_store(f"sqlite:///{path}", tmp_path)


def test_unreachable_postgres_fails_fast_and_clearly(tmp_path):
    """Nothing listens on the port: StoreUnavailable within seconds, not a hang."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="job database"):
        store_postgres.PostgresJobStore(
            f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout_s=2.0
        )
    assert time.monotonic() - started < 10


def test_store_reports_unavailable_when_the_server_goes_away(tmp_path):
    with postgres_server() as url:
        store = store_postgres.PostgresJobStore(url, connect_timeout_s=2.0)
        store.ping()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ping()
        assert time.monotonic() - started < 15
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # right after a failure calls fail at once, not after a timeout
            store.get("x")
        assert time.monotonic() - started < 1
    finally:
        store.close()


def test_unknown_scheme_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="postgresql://"):
        open_job_store("mysql://x", tmp_path)
