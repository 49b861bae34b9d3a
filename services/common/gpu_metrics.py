"""GPU memory of a stage process as Prometheus gauges, read from torch's CUDA allocator at scrape time.

``synchuman_gpu_memory_bytes{device, kind}`` per CUDA device the process has used:

* ``allocated``: bytes held by live tensors now (``torch.cuda.memory_allocated``);
* ``reserved``: bytes the caching allocator holds from the driver now (``torch.cuda.memory_reserved``:
  what ``nvidia-smi`` shows for the process, less the CUDA context);
* ``peak_allocated``: the largest ``allocated`` since the process started (``max_memory_allocated``).

The collector never initialises CUDA itself: a process that has not used a GPU (a stage on ``--device cpu``,
or a GPU stage still loading) exports the family with no samples, so a scrape costs nothing and cannot grab
a GPU context. Register it once per process with :func:`register_gpu_memory_metrics` (the stage servers do,
in :func:`services.common.stage_server.serve_forever`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

METRIC = "synchuman_gpu_memory_bytes"
HELP = "GPU memory of this process by CUDA device and kind (allocated, reserved, peak_allocated), in bytes."


class GpuMemoryCollector(Collector):
    """The ``synchuman_gpu_memory_bytes`` family (see the module docstring)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(METRIC, HELP, labels=["device", "kind"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(METRIC, HELP, labels=["device", "kind"])
        torch = sys.modules.get("torch")  # only a process that imported torch can have used a GPU
        if torch is not None and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                family.add_metric([device, "allocated"], float(torch.cuda.memory_allocated(index)))
                family.add_metric([device, "reserved"], float(torch.cuda.memory_reserved(index)))
                family.add_metric([device, "peak_allocated"], float(torch.cuda.max_memory_allocated(index)))
        yield family


_registered: set[int] = set()


def register_gpu_memory_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Add :class:`GpuMemoryCollector` to ``registry`` (once; later calls do nothing)."""
    if id(registry) not in _registered:
        registry.register(GpuMemoryCollector())
        _registered.add(id(registry))
