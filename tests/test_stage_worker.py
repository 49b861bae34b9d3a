"""services.common.worker and gpu_queue without gRPC: stop reasons, early close, FIFO admission."""

from __future__ import annotations

import threading
import time

import pytest

from services.common.gpu_queue import QueueFull, SlotLimiter, StoppedWhileQueued
from services.common.worker import StopReason, StopSignal, WorkStopped, stream_work


class Context:
    """The parts of grpc.ServicerContext the worker uses."""

    def __init__(self) -> None:
        self.active = True
        self.remaining = 100.0
        self.callbacks: list = []

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float:
        return self.remaining

    def add_callback(self, callback) -> bool:
        self.callbacks.append(callback)
        return True


def counting_work(steps: int, seen: dict):
    def work(report, should_stop):
        for step in range(1, steps + 1):
            if should_stop():
                seen["stopped_at"] = step
                raise RuntimeError("stopped")
            time.sleep(0.01)
            report(step)
        return "done"

    return work


def test_progress_is_relayed_in_order_and_the_result_returned():
    gen = stream_work(counting_work(5, {}), StopSignal(Context()))
    items = []
    try:
        while True:
            items.append(next(gen))
    except StopIteration as done:
        assert done.value == "done"
    assert items == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda ctx, ev: setattr(ctx, "active", False), StopReason.CANCELLED),
        (
            lambda ctx, ev: (setattr(ctx, "active", False), setattr(ctx, "remaining", 0.0)),
            StopReason.DEADLINE,
        ),
        (lambda ctx, ev: ev.set(), StopReason.SHUTDOWN),
    ],
)
def test_stop_reason_is_reported_after_the_worker_finished(setup, reason):
    ctx, event, seen = Context(), threading.Event(), {}
    gen = stream_work(counting_work(1000, seen), StopSignal(ctx, event))
    assert next(gen) == 1
    setup(ctx, event)
    with pytest.raises(WorkStopped) as err:
        list(gen)
    assert err.value.reason is reason
    assert seen["stopped_at"] < 100


def test_closing_the_stream_early_stops_the_work_and_waits_for_it():
    seen: dict = {}
    gen = stream_work(counting_work(1000, seen), StopSignal(Context()))
    assert next(gen) == 1
    gen.close()  # what gRPC does when the client vanished while a response was being sent
    assert "stopped_at" in seen  # close() returned only after the worker saw the stop


def test_errors_of_the_work_are_re_raised_when_nobody_asked_to_stop():
    def broken(report, should_stop):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        list(stream_work(broken, StopSignal(Context())))


def test_slots_are_granted_first_come_first_served_and_the_queue_is_bounded():
    limiter = SlotLimiter(concurrency=1, max_queue=2)
    order: list[int] = []
    release = threading.Event()

    def job(i: int) -> None:
        with limiter.slot(lambda: False, poll_s=0.01):
            order.append(i)
            if i == 0:
                release.wait(5)

    threads = [threading.Thread(target=job, args=(0,))]
    threads[0].start()
    while limiter.running == 0:
        time.sleep(0.005)
    for i in (1, 2):
        threads.append(threading.Thread(target=job, args=(i,)))
        threads[-1].start()
        while limiter.waiting < i:
            time.sleep(0.005)
    with pytest.raises(QueueFull) as full, limiter.slot(lambda: False):
        pass
    assert full.value.retry_after_s >= 1 and (full.value.running, full.value.waiting) == (1, 2)
    release.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2]


def test_a_stopped_request_leaves_the_queue():
    limiter = SlotLimiter(concurrency=1, max_queue=1)
    stop = threading.Event()
    with limiter.slot(lambda: False):
        with pytest.raises(StoppedWhileQueued):
            threading.Timer(0.05, stop.set).start()
            with limiter.slot(stop.is_set, poll_s=0.01):
                pass
        assert limiter.waiting == 0
