"""Checkpoint tooling: make-tiny + verify round trip, verify failure reports, offline pull, ensure."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from synchuman.checkpoints import ensure as ensure_mod
from synchuman.checkpoints.dinov2_config import REAL_DINOV2_CONFIG, TINY_DINOV2_CONFIG
from synchuman.checkpoints.layout import DINOV2_HUB_ID, CheckpointLayout
from synchuman.checkpoints.pull import OfflineError, Sources, pull
from synchuman.checkpoints.shapes import build_meta_model, model_shapes
from synchuman.checkpoints.tiny_common import write_model_folder
from synchuman.checkpoints.tiny_stage2 import write_tiny_stage2
from synchuman.checkpoints.verify import RANDOM_MARKER, TINY_MARKER, is_tiny, verify_tree, weights_kind
from synchuman_cli.main import main


def errors_of(root: Path, sections: tuple[str, ...] | None = None) -> list[str]:
    findings = verify_tree(root) if sections is None else verify_tree(root, sections)
    return [str(f) for f in findings if f.fatal]


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny tree written once through the CLI (``synchuman ckpts make-tiny``)."""
    root = tmp_path_factory.mktemp("tiny") / "ckpts"
    assert main(["ckpts", "make-tiny", str(root), "--seed", "3"]) == 0
    return root


@pytest.fixture
def tree(tiny_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny tree that a test may damage."""
    return Path(shutil.copytree(tiny_tree, tmp_path / "ckpts"))


@pytest.fixture(scope="session")
def stage2_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the tiny stage-2 part (no stage-1 writer needed)."""
    root = tmp_path_factory.mktemp("tiny2") / "ckpts"
    write_tiny_stage2(root, seed=5, dinov2_dim=32)
    return root


@pytest.fixture
def closed_url() -> str:
    """An http URL on localhost where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sources_at(url: str) -> Sources:
    return Sources(hf_endpoint=url, dinov2_url=f"{url}/dinov2.pth", prompt_embeds_url=f"{url}/embeds")


# --- make-tiny + verify ------------------------------------------------------------------------------------


def test_tiny_tree_verifies_and_is_marked(tiny_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert errors_of(tiny_tree) == []
    assert is_tiny(tiny_tree)
    layout = CheckpointLayout(tiny_tree)
    for path in (layout.stage1_pipeline_config, layout.stage2_pipeline, layout.dinov2_weights,
                 layout.slat_flow / "model.safetensors", layout.decoder_gs / "config.json",
                 layout.decoder_mesh / "model.safetensors", layout.normal_prompt_embeds):
        assert path.is_file(), path
    assert main(["ckpts", "verify", str(tiny_tree)]) == 0
    out = capsys.readouterr().out
    assert "tiny random weights" in out and "SLatMeshDecoder" in out


def test_random_benchmark_tree_is_never_taken_for_real_weights(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A verified tree carrying make-random's marker is named as random by verify and ensure (no pull)."""
    assert weights_kind(tree) == "tiny random"
    (tree / TINY_MARKER).unlink()
    assert weights_kind(tree) == "real"
    (tree / RANDOM_MARKER).write_text("{}\n")
    assert weights_kind(tree) == "full-size random"
    assert main(["ckpts", "verify", str(tree)]) == 0
    assert "(full-size random weights)" in capsys.readouterr().out
    said: list[str] = []
    assert ensure_mod.ensure(tree, sources=sources_at("http://127.0.0.1:9/"), say=said.append) == "random"
    assert "FULL-SIZE RANDOM" in said[0] and "MEANINGLESS" in said[0]


def test_tiny_stage2_pipeline_has_real_sampler_settings(stage2_tree: Path) -> None:
    args = json.loads(CheckpointLayout(stage2_tree).stage2_pipeline.read_text())["args"]
    assert args["slat_sampler"]["params"] == {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0],
                                              "rescale_t": 3.0}
    assert args["slat_sampler"]["args"] == {"sigma_min": 1e-5}
    assert len(args["slat_normalization"]["mean"]) == len(args["slat_normalization"]["std"]) == 8
    assert args["image_cond_model"] == "../dinov2"
    assert errors_of(stage2_tree, ("stage2",)) == []


def test_tiny_is_deterministic(stage2_tree: Path, tmp_path: Path) -> None:
    write_tiny_stage2(tmp_path, seed=5, dinov2_dim=32)
    a = load_file(str(CheckpointLayout(stage2_tree).decoder_gs / "model.safetensors"))
    b = load_file(str(CheckpointLayout(tmp_path).decoder_gs / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rewrite(path: Path, edit) -> str:
    """Apply ``edit(tensors) -> key`` to a safetensors file; returns the key it touched."""
    tensors = load_file(str(path))
    key = edit(tensors)
    save_file(tensors, str(path))
    return key


def test_verify_reports_misshaped_key(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = CheckpointLayout(tree).slat_flow / "model.safetensors"

    def grow(t: dict[str, torch.Tensor]) -> str:
        key = sorted(k for k in t if t[k].ndim == 2)[0]
        t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])
        return key

    key = _rewrite(path, grow)
    assert main(["ckpts", "verify", str(tree), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "1 mis-shaped key(s)" in out and key in out and "slat_flow/model.safetensors" in out


def test_verify_reports_removed_key(tree: Path) -> None:
    path = CheckpointLayout(tree).decoder_mesh / "model.safetensors"
    key = _rewrite(path, lambda t: (k := sorted(t)[-1], t.pop(k))[0])
    (error,) = errors_of(tree)
    assert "decoder_Mesh/model.safetensors" in error and "1 missing key(s)" in error and key in error


def test_verify_reports_unexpected_key(tree: Path) -> None:
    path = CheckpointLayout(tree).decoder_gs / "model.safetensors"
    _rewrite(path, lambda t: t.setdefault("extra.weight", torch.zeros(2)) is not None and "extra.weight")
    (error,) = errors_of(tree)
    assert "1 unexpected key(s): extra.weight" in error


def test_verify_reports_deleted_files(tree: Path) -> None:
    layout = CheckpointLayout(tree)
    (layout.decoder_gs / "model.safetensors").unlink()
    layout.color_prompt_embeds.unlink()
    errors = errors_of(tree)
    assert len(errors) == 2
    assert any("decoder_GS/model.safetensors: missing" in e for e in errors)
    assert any("clr_embeds.pt: missing" in e for e in errors)


def test_verify_reports_truncated_files(tree: Path) -> None:
    layout = CheckpointLayout(tree)
    for path in (layout.dinov2_weights, layout.slat_flow / "model.safetensors"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    errors = errors_of(tree)
    assert any("dinov2_vitl14_reg4_pretrain.pth: cannot read" in e for e in errors)
    assert any("slat_flow/model.safetensors: cannot read" in e for e in errors)


def test_verify_reports_config_inconsistencies(tree: Path) -> None:
    layout = CheckpointLayout(tree)
    config_path = layout.slat_flow / "config.json"
    config = json.loads(config_path.read_text())
    config["args"]["num_blocks"] += 1  # the file now lacks a whole block
    config_path.write_text(json.dumps(config))
    pipeline = json.loads(layout.stage2_pipeline.read_text())
    pipeline["args"]["image_cond_model"] = DINOV2_HUB_ID
    pipeline["args"]["slat_normalization"]["std"][3] = 0.0
    del pipeline["args"]["slat_sampler"]["params"]["cfg_interval"]
    layout.stage2_pipeline.write_text(json.dumps(pipeline))
    errors = "\n".join(errors_of(tree))
    assert "missing key(s): blocks.2." in errors
    assert "hub id 'dinov2_vitl14_reg'" in errors
    assert "8 positive stds" in errors
    assert "slat_sampler lacks cfg_interval" in errors


def test_verify_reports_width_mismatch_with_dinov2(tmp_path: Path) -> None:
    write_tiny_stage2(tmp_path, seed=0, dinov2_dim=48)  # conditioned on a 48-wide DINOv2 ...
    layout = CheckpointLayout(tmp_path)
    # ... next to the tiny one
    write_model_folder(layout.dinov2, TINY_DINOV2_CONFIG, 0, layout.dinov2_weights.name, pickle=True)
    errors = "\n".join(errors_of(tmp_path, ("dinov2", "stage2")))
    width = TINY_DINOV2_CONFIG["args"]["embed_dim"]
    assert f"cond_channels = 48 but the DINOv2 checkpoint has width {width}" in errors
    assert "mv_dim = 48" in errors


def test_verify_reads_sharded_weights(stage2_tree: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(stage2_tree, tmp_path / "ckpts"))
    folder = CheckpointLayout(root).decoder_gs
    tensors = load_file(str(folder / "model.safetensors"))
    keys = sorted(tensors)
    shards = {"part-1.safetensors": keys[::2], "part-2.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(folder / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").unlink()
    assert errors_of(root, ("stage2",)) == []
    save_file({k: tensors[k] for k in keys[1::2][1:]}, str(folder / "part-2.safetensors"))
    (error,) = errors_of(root, ("stage2",))
    assert "part-2.safetensors lacks keys its index names" in error and keys[1] in error


def test_require_verified_lists_every_problem(stage2_tree: Path, tmp_path: Path) -> None:
    from synchuman.checkpoints.loading import CheckpointError
    from synchuman.checkpoints.verify import require_verified

    root = Path(shutil.copytree(stage2_tree, tmp_path / "ckpts"))
    assert require_verified(root, ("stage2",)) == []
    layout = CheckpointLayout(root)
    (layout.decoder_gs / "model.safetensors").unlink()
    (layout.slat_flow / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"2 problem\(s\)") as info:
        require_verified(root, ("stage2",))
    assert "decoder_GS/model.safetensors: missing" in str(info.value)
    assert "slat_flow/config.json: missing" in str(info.value) and "ckpts pull" in str(info.value)


def test_verify_missing_root(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope") == [f"ERROR   {tmp_path / 'nope'}: checkpoint folder does not exist"]


# --- the real architecture (meta device) matches the upstream key manifests --------------------------------


def _assert_matches_manifest(config: dict, manifest: dict, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    _, model = build_meta_model(tmp_path)
    expected = {k: tuple(v["shape"]) for k, v in manifest["keys"].items()}
    assert model_shapes(model) == expected


@pytest.mark.parametrize("component", ["slat_flow", "decoder_GS", "decoder_Mesh"])
def test_real_stage2_configs_match_upstream_manifest(parity_dir: Path, tmp_path: Path, component: str):
    manifest = json.loads((parity_dir / "stage2" / f"{component}.manifest.json").read_text())
    _assert_matches_manifest(manifest["config"], manifest, tmp_path)


def test_real_dinov2_config_matches_upstream_manifest(parity_dir: Path, tmp_path: Path) -> None:
    path = parity_dir / "stage1" / "manifests" / "manifest_dinov2_vitl14_reg.json"
    manifest = json.loads(path.read_text())
    _assert_matches_manifest(REAL_DINOV2_CONFIG, manifest, tmp_path)


# --- pull and ensure without network ------------------------------------------------------------------------


def test_pull_offline_fails_fast_with_clear_message(
    closed_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_url)
    monkeypatch.setenv("SYNCHUMAN_DINOV2_URL", f"{closed_url}/dinov2.pth")
    monkeypatch.setenv("SYNCHUMAN_PROMPT_EMBEDS_URL", f"{closed_url}/embeds")
    start = time.monotonic()
    status = main(["ckpts", "pull", "--root", str(tmp_path / "ckpts"), "--connect-timeout", "2"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert status == 2 and elapsed < 10
    assert f"cannot reach {closed_url.removeprefix('http://')}" in err and "offline" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ckpts").exists()


def test_pull_offline_times_out_on_unanswered_connect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def hang(address: tuple[str, int], timeout: float) -> socket.socket:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    with pytest.raises(OfflineError, match=r"example.invalid:443 \(TimeoutError\).*within 0.5 s"):
        pull(tmp_path, Sources(hf_endpoint="https://example.invalid"), connect_timeout_s=0.5)


def test_probe_is_bounded_when_name_lookup_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    from synchuman.checkpoints.pull import probe

    def slow_lookup(address: tuple[str, int], timeout: float) -> socket.socket:
        time.sleep(3)  # a name lookup that ignores the connect timeout
        raise socket.gaierror("name lookup gave up")

    monkeypatch.setattr(socket, "create_connection", slow_lookup)
    start = time.monotonic()
    with pytest.raises(OfflineError, match=r"a.invalid:443 \(no answer\), b.invalid:80 \(no answer\)"):
        probe(["https://a.invalid/x", "http://b.invalid/y"], timeout_s=0.3)
    assert time.monotonic() - start < 2


def test_ensure_offline_writes_tiny_with_banner(closed_url: str, tmp_path: Path) -> None:
    said: list[str] = []
    root = tmp_path / "ckpts"
    assert ensure_mod.ensure(root, sources=sources_at(closed_url), say=said.append) == "tiny"
    assert any("MEANINGLESS" in s for s in said)
    assert errors_of(root) == [] and is_tiny(root)
    said.clear()  # second run: still offline, the tiny tree is kept and the banner repeated
    assert ensure_mod.ensure(root, sources=sources_at(closed_url), say=said.append) == "tiny"
    assert any("MEANINGLESS" in s for s in said)


def test_ensure_no_tiny_fails_offline(closed_url: str, tmp_path: Path) -> None:
    with pytest.raises(ensure_mod.EnsureError, match="--no-tiny"):
        ensure_mod.ensure(tmp_path, allow_tiny=False, sources=sources_at(closed_url), say=lambda s: None)
    assert not (tmp_path / TINY_MARKER).exists()


def test_ensure_keeps_verified_tree_without_network(tree: Path) -> None:
    (tree / TINY_MARKER).unlink()  # looks like a verified real tree: no network access is attempted
    unreachable = Sources(hf_endpoint="http://unused.invalid")
    assert ensure_mod.ensure(tree, sources=unreachable, say=lambda s: None) == "real"


def test_ensure_never_overwrites_partial_real_tree(tree: Path, closed_url: str) -> None:
    (tree / TINY_MARKER).unlink()
    (CheckpointLayout(tree).decoder_gs / "model.safetensors").unlink()
    with pytest.raises(ensure_mod.EnsureError, match="incomplete real checkpoints"):
        ensure_mod.ensure(tree, sources=sources_at(closed_url), say=lambda s: None)
    assert not (CheckpointLayout(tree).decoder_gs / "model.safetensors").exists()


# --- pull from local sources (loopback HTTP server; the hub client is replaced by a copy) -------------------


@pytest.fixture
def local_release(tiny_tree: Path, tmp_path: Path):
    """Serve a tiny 'release' over HTTP on 127.0.0.1: dinov2 weights and prompt embeddings as files, and
    a hub snapshot folder ``ckpts/{OneStage,SecondStage}`` whose pipeline.json names DINOv2 by its hub id."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    layout = CheckpointLayout(tiny_tree)
    (served / "embeds").mkdir(parents=True)
    shutil.copy(layout.dinov2_weights, served / "dinov2.pth")
    for path in (layout.normal_prompt_embeds, layout.color_prompt_embeds):
        shutil.copy(path, served / "embeds" / path.name)
    snapshot = tmp_path / "snapshot" / "ckpts"
    for name in ("OneStage", "SecondStage"):
        shutil.copytree(tiny_tree / name, snapshot / name)
    shutil.rmtree(snapshot / "OneStage" / "fixed_prompt_embeds_7view")
    pipeline = snapshot / "SecondStage" / "pipeline.json"
    config = json.loads(pipeline.read_text())
    config["args"]["image_cond_model"] = DINOV2_HUB_ID
    pipeline.write_text(json.dumps(config))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield sources_at(url), snapshot
    server.shutdown()
    thread.join()


def test_pull_places_files_resolves_hub_ids_and_replaces_tiny(
    local_release, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from synchuman.checkpoints import pull as pull_mod

    sources, snapshot = local_release
    calls = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path, endpoint: str, allow_patterns: list[str]):
        calls.append((repo_id, endpoint, allow_patterns))
        shutil.copytree(snapshot, Path(local_dir) / "ckpts", dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(pull_mod, "REAL_DINOV2_CONFIG", TINY_DINOV2_CONFIG)  # the served weights are tiny
    monkeypatch.setattr(pull_mod, "pull_segmenter", lambda layout: None)
    monkeypatch.setattr(pull_mod, "pull_pose_model", lambda layout: None)
    stale = CheckpointLayout(tree).stage1 / "stale.txt"
    stale.write_text("left over from the tiny tree")
    assert pull(tree, sources, connect_timeout_s=2, say=lambda s: None) == []
    assert calls == [("xishushu/SyncHuman", sources.hf_endpoint, ["ckpts/OneStage/*", "ckpts/SecondStage/*"])]
    assert not is_tiny(tree) and not stale.exists()
    args = json.loads(CheckpointLayout(tree).stage2_pipeline.read_text())["args"]
    assert args["image_cond_model"] == "../dinov2"
    assert errors_of(tree) == []
