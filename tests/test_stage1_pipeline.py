"""The whole stage-1 pipeline on tiny random checkpoints in the real folder layout (CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from synchuman.checkpoints.layout import CheckpointLayout
from synchuman.checkpoints.loading import CheckpointError
from synchuman.checkpoints.tiny import write_tiny_tree
from synchuman.options import Stage1Options
from synchuman.pipelines import stage1_acceleration
from synchuman.pipelines.stage1 import Stage1Pipeline
from synchuman.preprocess.framing import composite_on_white
from synchuman.samplers.flow_euler import SamplingCancelled


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> CheckpointLayout:
    root = tmp_path_factory.mktemp("ckpts")
    write_tiny_tree(root, seed=5)
    return CheckpointLayout(root)


@pytest.fixture(scope="module")
def pipeline(layout: CheckpointLayout) -> Stage1Pipeline:
    return Stage1Pipeline.from_pretrained(layout.root, "cpu", "fp32")


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    framed = np.zeros((768, 768, 4), np.uint8)
    framed[80:720, 240:530, :3] = rng.integers(0, 256, (640, 290, 3), dtype=np.uint8)
    framed[80:720, 240:530, 3] = 255
    framed[60:80, 300:470, 3] = 128  # soft edge
    crop = rng.integers(0, 256, (518, 518, 3), dtype=np.uint8)
    return framed, crop


@pytest.fixture(scope="module")
def result(pipeline: Stage1Pipeline, inputs: tuple[np.ndarray, np.ndarray]) -> tuple[object, list]:
    progress: list[tuple[int, int]] = []
    out = pipeline.run(
        *inputs, Stage1Options(seed=7, steps=3, guidance_scale=3.0), lambda s, n: progress.append((s, n))
    )
    return out, progress


def test_handoff_shapes_and_contents(pipeline: Stage1Pipeline, inputs, result) -> None:
    out, progress = result
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert out.colors.shape == out.normals.shape == (5, 768, 768, 3)
    assert out.colors.dtype == out.normals.dtype == np.uint8
    assert pipeline.voxel_resolution == 64
    coords = out.coords
    assert coords.dtype == np.int32 and coords.ndim == 2 and coords.shape[1] == 3
    assert 0 < len(coords) < 64**3
    assert coords.min() >= 0 and coords.max() < 64
    assert len(np.unique(coords, axis=0)) == len(coords)
    # colour view 0 is the input composited over white
    body = np.round(composite_on_white(inputs[0]) * 255).astype(np.uint8)
    assert np.array_equal(out.colors[0], body)
    # the generated colour views are not the input
    assert not np.array_equal(out.colors[1], body)
    # normal view 0 carries the face normal (view 4) resized into the face box
    face = torch.from_numpy(out.normals[4]).permute(2, 0, 1)[None].float()
    small = functional.interpolate(face, size=(256, 256), mode="bilinear", align_corners=False)
    small = small[0].permute(1, 2, 0)
    diff = np.abs(out.normals[0, :256, 256:512].astype(int) - small.numpy().round().astype(int))
    assert diff.max() <= 1


def test_deterministic_for_a_seed(pipeline: Stage1Pipeline, inputs, result) -> None:
    first, _ = result
    again = pipeline.run(*inputs, Stage1Options(seed=7, steps=3))
    assert np.array_equal(first.colors, again.colors)
    assert np.array_equal(first.normals, again.normals)
    assert np.array_equal(first.coords, again.coords)
    other = pipeline.run(*inputs, Stage1Options(seed=8, steps=3))
    assert not np.array_equal(first.normals, other.normals)


def test_cancel_between_steps(pipeline: Stage1Pipeline, inputs) -> None:
    progress: list[tuple[int, int]] = []
    with pytest.raises(SamplingCancelled, match="before step 2"):
        pipeline.run(
            *inputs,
            Stage1Options(steps=4),
            callback=lambda s, n: progress.append((s, n)),
            should_stop=lambda: len(progress) >= 1,
        )
    assert progress == [(1, 4)]


def test_bad_inputs_are_refused(pipeline: Stage1Pipeline, inputs) -> None:
    framed, crop = inputs
    with pytest.raises(ValueError, match="768"):
        pipeline.run(framed[:, :700], crop, Stage1Options(steps=1))
    with pytest.raises(ValueError, match="518"):
        pipeline.run(framed, crop[:500], Stage1Options(steps=1))
    with pytest.raises(ValueError, match="steps"):
        pipeline.run(framed, crop, Stage1Options(steps=0))


def test_missing_prompt_embeddings_named_at_load(layout: CheckpointLayout, tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    shutil.copytree(layout.root, root)
    broken = CheckpointLayout(root)
    broken.color_prompt_embeds.unlink()
    with pytest.raises(CheckpointError, match="clr_embeds.pt"):
        Stage1Pipeline.from_pretrained(broken.root, "cpu", "fp32")


def _write_tiny_text_encoder(layout: CheckpointLayout, width: int, tokens: int) -> None:
    """A character-level CLIP tokenizer (no merges: every word is spelt letter by letter) and a one-layer CLIP
    text model of the tiny width, in the folders the pipeline reads."""
    import json
    import string

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits + ",.-")
    names = ["<|startoftext|>", "<|endoftext|>", *symbols, *(f"{c}</w>" for c in symbols)]
    layout.tokenizer.mkdir(parents=True)
    vocab, merges = layout.tokenizer / "vocab.json", layout.tokenizer / "merges.txt"
    vocab.write_text(json.dumps({name: i for i, name in enumerate(names)}))
    merges.write_text("#version: 0.2\n")
    CLIPTokenizer(str(vocab), str(merges), model_max_length=tokens).save_pretrained(str(layout.tokenizer))
    config = CLIPTextConfig(
        vocab_size=len(names),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=tokens,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(str(layout.text_encoder))


def test_prompt_embeddings_computed_when_only_the_text_encoder_is_there(
    layout: CheckpointLayout, tmp_path: Path
) -> None:
    from synchuman.checkpoints.tiny_stage1 import CROSS_ATTENTION_DIM, PROMPT_TOKENS
    from synchuman.checkpoints.verify import verify_tree
    from synchuman.pipelines.stage1 import load_prompt_embeds

    root = Path(shutil.copytree(layout.root, tmp_path / "ckpts"))
    computed = CheckpointLayout(root)
    computed.normal_prompt_embeds.unlink()
    computed.color_prompt_embeds.unlink()
    assert any(f.fatal for f in verify_tree(root))  # neither the files nor a way to compute them
    _write_tiny_text_encoder(computed, CROSS_ATTENTION_DIM, PROMPT_TOKENS)
    findings = verify_tree(root)
    assert not [f for f in findings if f.fatal], [str(f) for f in findings if f.fatal]
    assert any("computed at start-up" in str(f) for f in findings)
    embeds = load_prompt_embeds(computed)
    assert embeds.shape == (10, PROMPT_TOKENS, CROSS_ATTENTION_DIM) and torch.isfinite(embeds).all()
    assert not torch.equal(embeds[0], embeds[5])  # normal and colour prompts differ
    Stage1Pipeline.from_pretrained(computed.root, "cpu", "fp32")


def test_service_compile_option_compiles_the_diffusion_model(
    layout: CheckpointLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`synchuman serve stage1 --compile` reaches stage1_acceleration.accelerate (the compile itself is not
    run here: minutes on a CPU); without the flag the model stays eager."""
    import argparse

    from services.stage1 import main as stage1_main
    from services.stage1.backend import Stage1PipelineBackend
    from services.stage1.compile_cache import aot_package_dir, cache_state

    calls: list[dict] = []
    packages = aot_package_dir(cache_state())  # --compiler aot (experimental): an ahead-of-time package there
    monkeypatch.setattr(stage1_acceleration, "accelerate", lambda pipeline, **kw: calls.append(kw))
    parser = argparse.ArgumentParser()
    stage1_main.add_arguments(parser)
    assert parser.parse_args([]).compile is False
    assert parser.parse_args(["--compile"]).compile is True
    Stage1PipelineBackend.load(layout.root, "cpu", "fp32")
    assert calls == []
    Stage1PipelineBackend.load(layout.root, "cpu", "fp32", compile_model=True)  # torch.compile by default
    assert calls == [{"compile_model": True, "cuda_graphs": False, "package_dir": None}]
    Stage1PipelineBackend.load(layout.root, "cpu", "fp32", compile_model=True, compiler="aot")
    assert calls[-1] == {"compile_model": True, "cuda_graphs": False, "package_dir": packages}
    assert parser.parse_args([]).cuda_graphs == "auto"
    Stage1PipelineBackend.load(
        layout.root, "cpu", "fp32", compile_model=True, cuda_graphs=True, compiler="aot"
    )
    assert calls[-1] == {"compile_model": True, "cuda_graphs": True, "package_dir": None}
    with pytest.raises(ValueError, match="needs --compile"):
        Stage1PipelineBackend.load(layout.root, "cpu", "fp32", cuda_graphs=True)
    with pytest.raises(SystemExit, match="add --compile"):
        stage1_main.run(parser.parse_args(["--cuda-graphs", "on"]))


def test_cfg_parallel_computes_the_same_views(layout: CheckpointLayout, inputs, result) -> None:
    """The unconditional CFG half on a replica (here on the same CPU) gives the joint batch's output."""
    split = Stage1Pipeline.from_pretrained(layout.root, "cpu", "fp32")
    stage1_acceleration.enable_cfg_parallel(split, "cpu")
    assert split.cfg_diffusion is not None and split.cfg_diffusion is not split.diffusion
    out = split.run(*inputs, Stage1Options(seed=7, steps=3, guidance_scale=3.0))
    joint, _ = result
    for a, b in ((out.colors, joint.colors), (out.normals, joint.normals)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # fp32 summation order, then uint8 rounding
    differing = {tuple(c) for c in out.coords} ^ {tuple(c) for c in joint.coords}
    assert len(differing) <= 0.002 * len(joint.coords)
    other_seed = split.run(*inputs, Stage1Options(seed=8, steps=3))
    assert not np.array_equal(other_seed.normals, out.normals)


def test_cfg_parallel_must_precede_compilation(layout: CheckpointLayout) -> None:
    pipe = Stage1Pipeline.from_pretrained(layout.root, "cpu", "fp32")
    stage1_acceleration.accelerate(pipe)  # wraps only; compilation would happen at the first call
    with pytest.raises(RuntimeError, match="before accelerate"):
        stage1_acceleration.enable_cfg_parallel(pipe, "cpu")


def test_service_cfg_device_option(layout: CheckpointLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    """`synchuman serve stage1 --cfg-device cuda:1` reaches enable_cfg_parallel before compilation; devices
    that cannot serve are refused with a message naming the flag."""
    import argparse

    from services.stage1 import backend as stage1_backend
    from services.stage1 import main as stage1_main

    parser = argparse.ArgumentParser()
    stage1_main.add_arguments(parser)
    assert parser.parse_args(["--cfg-device", "cuda:1"]).cfg_device == "cuda:1"
    for main_device, second in (("cpu", "cpu"), ("cuda:0", "cpu"), ("cuda:0", "cuda:0"), ("cuda", "cuda:99")):
        if main_device != "cpu" and second != "cpu" and torch.cuda.device_count() == 0:
            with pytest.raises(ValueError, match="--cfg-device .* has 0 CUDA device"):
                stage1_backend.check_second_device(main_device, second)
            continue
        with pytest.raises(ValueError, match="--cfg-device"):
            stage1_backend.check_second_device(main_device, second)
    order: list[str] = []
    monkeypatch.setattr(stage1_backend, "check_second_device", lambda main, second: order.append("check"))
    monkeypatch.setattr(stage1_acceleration, "enable_cfg_parallel", lambda pipe, d: order.append(f"cfg {d}"))
    monkeypatch.setattr(stage1_acceleration, "accelerate", lambda pipe, **kw: order.append(f"compile {kw}"))
    loaded = stage1_backend.Stage1PipelineBackend.load(
        layout.root, "cpu", "fp32", compile_model=True, cfg_device="cuda:1"
    )
    compile_call = "compile {'compile_model': True, 'cuda_graphs': True, 'package_dir': None}"
    assert order == ["check", "cfg cuda:1", compile_call]
    assert "cuda:1 (CFG-parallel)" in loaded.info().device


def test_backend_runs_every_request_on_one_gpu_thread() -> None:
    """Warm-up and requests share one long-lived thread (CUDA graphs are recorded per thread), whatever
    thread calls; errors from the pipeline reach the caller."""
    import threading

    from services.stage1.backend import Stage1Inputs, Stage1PipelineBackend
    from synchuman.pipelines.info import PipelineInfo

    class RecordingPipeline:  # test double of Stage1Pipeline.run
        def __init__(self) -> None:
            self.threads: list[int] = []

        def run(self, framed, conditioning, options, callback, should_stop):
            self.threads.append(threading.get_ident())
            if options.steps == 7:
                raise RuntimeError("pipeline failed")
            callback(options.steps, options.steps)
            views = np.zeros((5, 8, 8, 3), np.uint8)
            return type("Out", (), {"colors": views, "normals": views, "coords": np.zeros((1, 3), int)})()

    pipeline = RecordingPipeline()
    backend = Stage1PipelineBackend(pipeline, PipelineInfo("ckpts", "random", "cpu", "float32"), 64)
    backend.warm_up()
    seen: list[tuple[int, int]] = []
    callers = [
        threading.Thread(
            target=backend.run,
            args=(
                Stage1Inputs(None, None),
                Stage1Options(steps=2),
                lambda phase, s, n: seen.append((s, n)),
                lambda: False,
            ),
        )
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
        caller.join()
    assert len(pipeline.threads) == 4 and len(set(pipeline.threads)) == 1
    # each request reports sampling 0/N as it starts, then its steps
    assert pipeline.threads[0] != threading.get_ident() and seen == [(0, 2), (2, 2)] * 3
    with pytest.raises(RuntimeError, match="pipeline failed"):
        backend.run(Stage1Inputs(None, None), Stage1Options(steps=7), lambda phase, s, n: None, lambda: False)
