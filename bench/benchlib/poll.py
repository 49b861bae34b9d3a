"""Watching running services: health, peak memory per GPU and per service process, and the services' JSON
log records."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from services.supervisor import health_status


def serving(address: str) -> bool:
    """Whether the server at ``address`` (``host:port``) answers its overall health check with SERVING."""
    return health_status(address, "", timeout_s=2.0) == health_pb2.HealthCheckResponse.SERVING


def last_record(log_path: Path, message: str) -> dict[str, Any]:
    """The last JSON log record of the file ``log_path`` with ``msg == message`` ({} when none)."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if f'"{message}"' in line:
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                continue
    return {}


def pids_listening(address: str) -> list[int]:
    """PIDs whose command line has ``--address ADDRESS`` (the service, found again after a restart)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"--address" and b == address.encode() for a, b in zip(argv, argv[1:], strict=False)):
            found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of a process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of an ``nvidia-smi`` CSV query (no header, no units)."""
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


class MemoryPoller:
    """Peak memory in bytes per GPU (``nvidia-smi``, whole GPU) and per service process (its GPU memory, or
    its RSS on the CPU), polled every ``interval_s`` while used as a context manager.

    ``addresses``: service name -> the ``--address`` its process was started with."""

    def __init__(self, addresses: dict[str, str], gpu: bool, interval_s: float = 0.5) -> None:
        self.addresses = addresses
        self.gpu = gpu
        self.interval_s = interval_s
        self.peak_gpu: dict[str, int] = {}
        self.peak_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory", daemon=True)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _bump(self, table: dict[str, int], key: str, value: int) -> None:
        table[key] = max(table.get(key, 0), value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (OSError, subprocess.SubprocessError, ValueError):
                pass  # a transient nvidia-smi failure loses one sample
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        """Take one sample now."""
        pids = {pid: name for name, address in self.addresses.items() for pid in pids_listening(address)}
        if not self.gpu:
            for pid, name in pids.items():
                self._bump(self.peak_process, name, rss_bytes(pid))
            return
        uuids = {}
        for index, uuid, used in _nvidia_smi("--query-gpu=index,uuid,memory.used"):
            uuids[uuid] = index
            self._bump(self.peak_gpu, f"GPU {index}", int(float(used)) << 20)
        for pid, used, uuid in _nvidia_smi("--query-compute-apps=pid,used_memory,gpu_uuid"):
            name = pids.get(int(pid))
            if name is not None:
                self._bump(self.peak_process, f"{name} (GPU {uuids.get(uuid, '?')})", int(float(used)) << 20)
