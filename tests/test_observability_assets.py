"""deploy/observability: the Grafana dashboard and the Prometheus alert rules name only metrics and labels
the services export, the rules pass ``promtool check rules`` and their unit tests (``promtool test rules``),
and the stages' GPU memory gauges report torch's allocator without ever initialising CUDA themselves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO_ROOT, require_tool
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import REGISTRY

import gateway.metrics  # noqa: F401  (registers the gateway's metrics)
import services.common.gpu_share  # noqa: F401  (registers the GPU turn's metrics)
import services.common.observability  # noqa: F401  (registers the RPC metrics)
from services.common import gpu_metrics

FOLDER = REPO_ROOT / "deploy" / "observability"
PROMTOOL = REPO_ROOT / ".cache" / "tools" / "promtool"
#: ``metric{labels}`` (the selector's labels, if any) in a PromQL expression.
SELECTOR = re.compile(r"\b(synchuman_[a-z0-9_]+)(?:\{([^}]*)\})?")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every sample name the services' metrics produce, with the labels it carries."""
    gpu_metrics.register_gpu_memory_metrics()
    names: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001  (the registry has no public listing)
        if hasattr(collector, "_type"):  # a Counter / Gauge / Histogram
            described = [(collector._type, collector._name, collector._labelnames)]  # noqa: SLF001
        elif isinstance(collector, gpu_metrics.GpuMemoryCollector):
            described = [(f.type, f.name, f._labelnames) for f in collector.describe()]  # noqa: SLF001
        else:  # the client's own process / platform / gc collectors
            continue
        for kind, base, label_names in described:
            labels = set(label_names)
            base = base.removesuffix("_total") if kind == "counter" else base
            for suffix in SUFFIXES.get(kind, ("",)):
                names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and alert rule."""
    dashboard = json.loads((FOLDER / "grafana-dashboard.json").read_text())
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((FOLDER / "alerts.yaml").read_text())
    found += [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return found


def test_every_metric_and_label_named_is_exported() -> None:
    known = exported()
    assert "synchuman_gpu_memory_bytes" in known and "synchuman_gateway_stage_seconds_bucket" in known
    seen = set()
    for where, expr in expressions():
        for name, selector in SELECTOR.findall(expr):
            assert name in known, f"{where}: {name} is not exported by the services"
            used = {m.group(1) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", selector or "")}
            assert used <= known[name], f"{where}: {name} has no label {used - known[name]}"
            seen.add(name)
    panels = {p["title"] for p in json.loads((FOLDER / "grafana-dashboard.json").read_text())["panels"]}
    expected = {"Jobs by state", "Queue depth", "Stage retries per minute", "GPU memory", "Webhook backlog"}
    assert expected <= panels
    assert len(seen) >= 8, seen


def test_a_misspelt_metric_is_caught() -> None:
    """The check above can fail: a name the services do not export is not in the exported set."""
    known = exported()
    assert "synchuman_gateway_job" not in known and "synchuman_rpc_requests" not in known


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = require_tool(PROMTOOL, "promtool (Debian's prometheus package)")
    for argv in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        run = subprocess.run([str(promtool), *argv], cwd=FOLDER, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout


def _fake_torch(initialized: bool) -> SimpleNamespace:
    sizes = {"allocated": 3 << 30, "reserved": 5 << 30, "peak": 7 << 30}
    cuda = SimpleNamespace(
        is_initialized=lambda: initialized,
        device_count=lambda: 1,
        memory_allocated=lambda i: sizes["allocated"],
        memory_reserved=lambda i: sizes["reserved"],
        max_memory_allocated=lambda i: sizes["peak"],
    )
    return SimpleNamespace(cuda=cuda)


@pytest.mark.parametrize("initialized", [True, False])
def test_gpu_memory_gauges_follow_the_allocator_and_never_start_cuda(monkeypatch, initialized: bool) -> None:
    registry = CollectorRegistry()
    gpu_metrics.register_gpu_memory_metrics(registry)
    gpu_metrics.register_gpu_memory_metrics(registry)  # a second call adds nothing (no duplicate error)
    monkeypatch.setitem(__import__("sys").modules, "torch", _fake_torch(initialized))
    text = generate_latest(registry).decode()
    assert "# TYPE synchuman_gpu_memory_bytes gauge" in text
    sample = r'^synchuman_gpu_memory_bytes\{device="cuda:0",kind="(\w+)"\} (\S+)$'
    samples = dict(re.findall(sample, text, re.M))
    if initialized:
        assert {k: float(v) for k, v in samples.items()} == {
            "allocated": float(3 << 30),
            "reserved": float(5 << 30),
            "peak_allocated": float(7 << 30),
        }
    else:
        assert samples == {}


def test_assets_are_documented() -> None:
    readme = (FOLDER / "README.md").read_text()
    for name in ("grafana-dashboard.json", "alerts.yaml", "alerts.test.yaml"):
        assert name in readme and (FOLDER / name).exists()
    assert Path(REPO_ROOT / "README.md").read_text().count("deploy/observability") >= 1
