"""PhaseTimer: seconds per phase everywhere, peak GPU memory per phase on CUDA (CUDA calls replaced here)."""

from __future__ import annotations

import time

import pytest
import torch

from synchuman.phases import PhaseTimer


def test_cpu_phases_have_times_and_no_memory() -> None:
    timer = PhaseTimer("cpu")
    with timer("a"):
        time.sleep(0.02)
    with timer("a"):
        time.sleep(0.02)
    with timer("b"):
        pass
    assert timer.seconds["a"] >= 0.04 and 0 <= timer.seconds["b"] < timer.seconds["a"]
    assert timer.peak_gib == {}


def test_cuda_phase_peaks_are_reset_per_phase_and_kept_at_their_max(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    peaks = iter([3 * 2**30, 5 * 2**30, 1 * 2**30, 2**30])  # phases a, b, a again, c
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: next(peaks))
    timer = PhaseTimer("cuda:0")
    for phase in ("a", "b", "a"):
        with timer(phase):
            calls.append(phase)
    assert timer.peak_gib == {"a": 3.0, "b": 5.0}
    assert calls[:4] == ["sync", "reset", "a", "sync"]  # work is bracketed by syncs, the counter reset first
    with pytest.raises(RuntimeError, match="still timed"), timer("c"):
        raise RuntimeError("a failing phase is still timed")
    assert "c" in timer.seconds and timer.peak_gib["c"] == 1.0
