"""Per-phase wall time and peak GPU memory of a pipeline run (one instance per request)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

GIB = float(2**30)


class PhaseTimer:
    """Wall seconds per phase (summed when a phase repeats) and, on CUDA, the peak memory allocated by
    PyTorch during each phase in GiB (``torch.cuda.max_memory_allocated``, weights included; the max when a
    phase repeats).

    On CUDA each phase starts and ends with a device synchronisation, so its time is the work it launched,
    and the peak counter is reset at its start: not for use around per-step code.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}

    @property
    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) / GIB
                self.peak_gib[phase] = max(self.peak_gib.get(phase, 0.0), peak)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started
