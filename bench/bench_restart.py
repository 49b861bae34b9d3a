"""Restart bench: how long a real ``synchuman serve stage1|stage2`` process takes to reach SERVING, first with
an empty compile cache and then on restarts that find it, and whether its first request after a restart
runs at full speed (nothing recompiled).

Per ``--config "NAME=ARGS"`` the service is started ``1 + --restarts`` times in a row (each start: process
launch -> gRPC health SERVING, then ``--requests`` requests, then SIGTERM and wait for the exit). Every
config gets its own empty ``TORCHINDUCTOR_CACHE_DIR`` under ``--cache-root`` (the directory compose mounts
as a volume), kept across its restarts; stage 1's ``--compile`` builds its ahead-of-time package there on the
first start and loads it on restarts (``--compiler torch.compile``: Dynamo + Inductor and their caches).
``env:KEY=VALUE`` words in ARGS set environment variables of that service instead of arguments (e.g.
``env:TORCH_CACHING_PRECOMPILE=1``). With ``--cold-together`` the first (cold) starts of all configs run at
once to save time (their start-up seconds then overlap and are marked); the restarts always run one at a time.

The table gives, per start: seconds to SERVING, the service's own load / warm-up split (its ``serving`` log
line), what its log said about the compile cache, and the request wall times.

Device command (``.whl`` carried, checkpoints drawn on the GPU first)::

    python3 -m synchuman_cli ckpts make-random /tmp/ckpts --parts dinov2,stage1 && \\
    python3 bench/bench_restart.py --stage 1 --ckpts /tmp/ckpts --restarts 2 \\
        --config "aot=--device cuda:0 --compile" --config "eager=--device cuda:0" \\
        --config "torch.compile=--device cuda:0 --compile --compiler torch.compile"
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchlib.inputs import stage1_inputs, stage2_inputs  # noqa: E402
from benchlib.launch import StageProcess  # noqa: E402
from benchlib.poll import last_record  # noqa: E402
from benchlib.stage_calls import call_stage  # noqa: E402

#: What the stage-1 service logs about its compile cache at start-up (services/stage1/compile_cache.py) and
#: about its ahead-of-time compiled package in the warm-up (synchuman/pipelines/compiled_model.py).
CACHE_MESSAGES = (
    "compile cache present",
    "compile cache empty",
    "compile cache: traced graphs saved",
    "no compiled model package",
    "compiled model package unusable",
    "compiled model package built",
    "compiled model package loaded",
    "ahead-of-time compiled model unusable",
    "ahead-of-time compiling failed before",
)


@dataclass
class Start:
    """One start of one service."""

    ready_s: float | None = None
    load_s: float | None = None
    warm_up_s: float | None = None
    cache: list[str] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)
    overlapped: bool = False
    error: str = ""


@dataclass
class Config:
    name: str
    args: list[str]
    env: dict[str, str]
    cache_dir: Path
    starts: list[Start] = field(default_factory=list)


def parse_config(spec: str, cache_root: Path, index: int) -> Config:
    name, _, extra = spec.partition("=")
    args, env = [], {}
    for word in shlex.split(extra):
        if word.startswith("env:"):
            key, _, value = word[4:].partition("=")
            env[key] = value
        else:
            args.append(word)
    return Config(name, args, env, cache_root / f"config{index}")


def finish_start(start: Start, svc: StageProcess, stage: int, inputs: Any, steps: int, requests: int) -> None:
    """Record the start-up log lines, run the requests, stop the service; print what was measured."""
    try:
        serving_record = last_record(svc.log_path, "serving")
        start.load_s = serving_record.get("load_s")
        start.warm_up_s = serving_record.get("warm_up_s")
        text = svc.log_path.read_text(errors="replace")
        start.cache = [m for m in CACHE_MESSAGES if m in text]
        package = last_record(svc.log_path, "compiled model package loaded") or last_record(
            svc.log_path, "compiled model package built"
        )
        if "seconds" in package:
            start.cache.append(f"package {package['seconds']} s")
        for i in range(requests):
            start.requests.append(call_stage(stage, svc.address, inputs, steps, f"restart-{i + 1}")["wall_s"])
    finally:
        svc.stop()
        print(f"{svc.log_path.name}: {start}", flush=True)


def wait_ready(services: list[tuple[Start, StageProcess]], timeout_s: float) -> None:
    """Wait until every service is SERVING (its ``ready_s`` set) or failed (its ``error`` set, the process
    stopped), at most ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    pending = list(services)
    while pending:
        for item in list(pending):
            start, svc = item
            try:
                ready = svc.ready_s()
            except RuntimeError as exc:
                start.error = str(exc)[-300:]
                pending.remove(item)
                continue
            if ready is not None:
                start.ready_s = ready
                pending.remove(item)
                print(f"SERVING after {ready:.1f} s ({svc.log_path.name})", flush=True)
        if pending and time.perf_counter() > deadline:
            for start, svc in pending:
                start.error = f"not SERVING within {timeout_s:.0f} s"
                svc.stop()
            return
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--ckpts", required=True, type=Path)
    parser.add_argument("--config", action="append", required=True, help='"NAME=ARGS" (repeatable)')
    parser.add_argument("--restarts", type=int, default=2, help="starts after the first (default 2)")
    parser.add_argument("--requests", type=int, default=1, help="requests after each start (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the stage's)")
    parser.add_argument("--cache-root", type=Path, default=None, help="parent of the per-config caches")
    parser.add_argument("--cold-together", action="store_true", help="first starts of all configs at once")
    parser.add_argument("--ready-timeout", type=float, default=400.0)
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    steps = args.steps or (50 if args.stage == 1 else 25)
    cache_root = args.cache_root or Path(tempfile.mkdtemp(prefix="compile-cache-"))
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="restart-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    configs = [parse_config(spec, cache_root, i) for i, spec in enumerate(args.config)]
    inputs = stage1_inputs() if args.stage == 1 else stage2_inputs(20000)

    def launch(config: Config, number: int) -> tuple[Start, StageProcess]:
        start = Start()
        config.starts.append(start)
        log_path = log_dir / f"config{configs.index(config)}-start{number}.log"
        env = {"TORCHINDUCTOR_CACHE_DIR": str(config.cache_dir), **config.env}
        return start, StageProcess(args.stage, args.ckpts, config.args, log_path, env)

    rounds = range(1 + args.restarts)
    if args.cold_together and len(configs) > 1:
        first = [launch(c, 0) for c in configs]
        for start, _ in first:
            start.overlapped = True
        wait_ready(first, args.ready_timeout)
        for start, svc in first:
            if not start.error:
                finish_start(start, svc, args.stage, inputs, steps, args.requests)
        rounds = range(1, 1 + args.restarts)
    for number in rounds:
        for config in configs:
            if any(s.error for s in config.starts):
                continue
            start, svc = launch(config, number)
            wait_ready([(start, svc)], args.ready_timeout)
            if not start.error:
                finish_start(start, svc, args.stage, inputs, steps, args.requests)

    print(
        f"\n| config (`serve stage{args.stage}` args, env) | start | to SERVING (s) | load / warm-up (s) "
        f"| compile-cache log | request wall ({steps} steps, s) |"
    )
    print("|---|---|---|---|---|---|")
    for config in configs:
        label = " ".join(config.args) + "".join(f" {k}={v}" for k, v in config.env.items())
        for number, start in enumerate(config.starts):
            kind = "first (empty cache)" if number == 0 else f"restart {number}"
            if start.overlapped:
                kind += ", overlapped"
            ready = f"{start.ready_s:.1f}" if start.ready_s is not None else f"FAILED: {start.error}"
            split = f"{start.load_s} / {start.warm_up_s}"
            walls = ", ".join(f"{w:.2f}" for w in start.requests)
            print(
                f"| {config.name} (`{label}`) | {kind} | {ready} | {split} | {'; '.join(start.cache)} "
                f"| {walls} |"
            )
    print(f"\nlogs: {log_dir}; caches: {cache_root}")
    return 0 if all(not s.error for c in configs for s in c.starts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
