"""services.supervisor with stand-in children: readiness, restart after a crash, give-up, clean stop."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from services.launcher import EmbeddedConfig, child_specs, free_port
from services.supervisor import ChildSpec, Supervisor, health_status

FAKE = str(Path(__file__).with_name("fake_service.py"))


def fake(name: str, *extra: str) -> ChildSpec:
    address = f"127.0.0.1:{free_port()}"
    return ChildSpec(name, (sys.executable, FAKE, address, *extra), address, "fake.Service")


def test_children_become_ready_and_a_killed_child_is_restarted():
    said: list[str] = []
    supervisor = Supervisor([fake("a"), fake("b")], say=said.append)
    supervisor.start()
    supervisor.run_in_background()
    try:
        assert supervisor.wait_ready(60)
        old = supervisor.kill_child("a")
        deadline = time.monotonic() + 30
        while not any(line.startswith("a: started") and f"pid {old}" not in line for line in said[2:]):
            assert time.monotonic() < deadline, said
            time.sleep(0.1)
        assert supervisor.wait_ready(60)
        assert health_status(supervisor._children[0].spec.address, "fake.Service") == 1
        assert any("a: exited with status -9; restarting in 1 s" in line for line in said)
    finally:
        supervisor.stop()
    assert "a: stopped (status 0)" in said and "b: stopped (status 0)" in said
    assert supervisor.failed is None


def test_a_child_that_keeps_crashing_is_given_up_on():
    said: list[str] = []
    supervisor = Supervisor([fake("bad", "--exit-at-once", "3")], say=said.append, max_restarts=1)
    supervisor.start()
    try:
        assert not supervisor.wait_ready(30)
    finally:
        supervisor.stop()
    assert supervisor.failed is not None and "bad exited 2 times" in supervisor.failed
    assert "last exit status 3" in supervisor.failed


def test_sigterm_to_the_supervisor_process_stops_every_child(tmp_path):
    script = tmp_path / "run.py"
    specs = [fake("a"), fake("b")]
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from services.supervisor import ChildSpec, Supervisor\n"
        f"specs = {[(s.name, s.argv, s.address, s.health_service) for s in specs]!r}\n"
        "sup = Supervisor([ChildSpec(*s) for s in specs])\n"
        "sup.start()\n"
        "sys.exit(sup.run_until_stopped(on_ready=lambda: print('READY', flush=True)))\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "READY" in line:
                break
        assert all(health_status(s.address, "fake.Service") == 1 for s in specs)
        process.terminate()
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "a: stopped (status 0)" in err and "b: stopped (status 0)" in err
    assert all(health_status(s.address, "fake.Service", timeout_s=0.5) is None for s in specs)


def test_embedded_children_share_the_configured_addresses(tmp_path):
    config = EmbeddedConfig.with_free_ports(ckpts=tmp_path / "ck", device="cpu", data_dir=tmp_path / "jobs")
    specs = {s.name: s for s in child_specs(config)}
    assert list(specs) == ["preprocess", "stage1", "stage2", "gateway"]
    gateway = specs["gateway"].argv
    for name in ("preprocess", "stage1", "stage2"):
        assert gateway[gateway.index(f"--{name}") + 1] == specs[name].address == config.address(name)
    stage1 = specs["stage1"].argv
    assert stage1[stage1.index("--ckpts") + 1] == str(tmp_path / "ck")
    assert stage1[stage1.index("--device") + 1] == "cpu"
    assert "--segmentation-dir" in specs["preprocess"].argv


def test_stage1_only_options_reach_stage1_only(tmp_path):
    config = EmbeddedConfig.with_free_ports(stage_args=["--max-queue", "3"], stage1_args=["--compile"])
    specs = {s.name: s.argv for s in child_specs(config)}
    assert "--compile" in specs["stage1"] and "--compile" not in specs["stage2"]
    assert all(argv[argv.index("--max-queue") + 1] == "3" for argv in (specs["stage1"], specs["stage2"]))
    import argparse

    from services.stage1.main import add_arguments  # the stage-1 server accepts what it is given

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    serve_at = specs["stage1"].index("stage1") + 1
    assert parser.parse_args(specs["stage1"][serve_at:]).compile is True


def test_all_in_one_stage1_flags_become_stage1_options():
    from synchuman_cli.commands.serve import stage1_options
    from synchuman_cli.main import build_parser

    assert stage1_options(build_parser().parse_args(["serve"])) == []
    args = build_parser().parse_args(["serve", "--compile", "--stage1-cfg-device", "cuda:1"])
    assert stage1_options(args) == ["--compile", "--cfg-device", "cuda:1"]
