"""Parity fixture kinds of stage 1: ``diffusion_2d3d``, ``ss_decoder``, ``dinov2``.

Each runner builds our model from the fixture's ``config.json``, loads ``model.safetensors`` strictly (fp16
stored values are cast to fp32), replays the recorded call and compares every ``out.*`` tensor (and the
``intermediate.*`` tensors we can reproduce). Input sizes, block indices and batch sizes are read from the
io file, so a new fixture folder of the same format runs without code changes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional

from synchuman.checkpoints.loading import from_pretrained, load_state_dict_strict, read_safetensors
from synchuman.parity.registry import Check, Fixture, compare, register_fixture_kind

DIFFUSION_ATOL = 1e-4
ATOL = 2e-5


def _unchecked(fixture: Fixture, checks: list[Check], prefixes: tuple[str, ...] = ("out.",)) -> list[Check]:
    """Append a failing check naming recorded outputs that no check compared."""
    recorded = {k for k in fixture.io if k.startswith(prefixes)}
    missing = sorted(recorded - {c.name for c in checks})
    if missing:
        checks.append(Check("unchecked outputs", len(missing), 0, False, ", ".join(missing), numeric=False))
    return checks


@contextmanager
def _capture(model: nn.Module, names: dict[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of submodules ``names`` (io key -> module path) while inside."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for key, path in names.items():

        def hook(_m: nn.Module, _i: object, out: torch.Tensor, key: str = key) -> None:
            captured[key] = out

        handles.append(modules[path].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@register_fixture_kind("ss_decoder", modules=("SparseStructureDecoder",))
def run_ss_decoder(fixture: Fixture) -> list[Check]:
    """``logits = model(x)``; compares the logits and the thresholded occupancy."""
    from synchuman.models.ss_decoder import SparseStructureDecoder

    model = from_pretrained(fixture.path, SparseStructureDecoder, device=fixture.device)
    logits = model(fixture.tensor("in.x").to(fixture.device))
    checks = [compare("out.logits", logits, fixture.tensor("out.logits"), ATOL)]
    if "out.occupancy" in fixture.io:
        reference = fixture.tensor("out.occupancy")
        # a voxel whose reference logit is within the tolerance of 0 may flip legitimately
        ambiguous = fixture.tensor("out.logits").abs() <= ATOL
        flips = ((logits.cpu() > 0).float() != reference) & ~ambiguous
        checks.append(Check("out.occupancy", float(flips.sum()), 0, not bool(flips.any()), numeric=False))
    return _unchecked(fixture, checks)


def _dinov2_model(fixture: Fixture) -> nn.Module:
    from synchuman.models.dinov2 import DinoVisionTransformer

    accepted = set(inspect.signature(DinoVisionTransformer.__init__).parameters) - {"self"}
    config = fixture.config.get("args", fixture.config)
    kwargs = {k: v for k, v in config.items() if k in accepted}
    with torch.device("meta"):
        model = DinoVisionTransformer(**kwargs)
    state = read_safetensors(fixture.path / "model.safetensors", dtype=torch.float32)
    load_state_dict_strict(model, state, what=f"DINOv2 fixture {fixture.path}")
    return model.to(fixture.device).eval()


@register_fixture_kind("dinov2", modules=("DinoVisionTransformer", "dinov2 ViT with 4 registers (tiny)"))
def run_dinov2(fixture: Fixture) -> list[Check]:
    """Every input size ``in.image_<s>``: x_prenorm (+ layer norm), normed tokens, position embeddings and
    the recorded intermediate layers."""
    model = _dinov2_model(fixture)
    checks: list[Check] = []
    sizes = sorted(int(m.group(1)) for k in fixture.io if (m := re.fullmatch(r"in\.image_(\d+)", k)))
    if not sizes:
        raise KeyError(f"{fixture.path}: io.safetensors has no in.image_<size> tensors")
    for size in sizes:
        x = fixture.tensor(f"in.image_{size}").to(fixture.device)
        out = model(x, is_training=True)
        prenorm = out["x_prenorm"]
        grid = (x.shape[-2] // model.patch_size) * (x.shape[-1] // model.patch_size)
        tokens = torch.zeros(1, 1 + grid, model.embed_dim, device=fixture.device)
        ours = {
            f"out.x_prenorm_{size}": prenorm,
            f"out.cond_layernorm_{size}": functional.layer_norm(prenorm, prenorm.shape[-1:]),
            f"out.x_norm_clstoken_{size}": out["x_norm_clstoken"],
            f"out.x_norm_patchtokens_{size}": out["x_norm_patchtokens"],
            f"out.pos_embed_interp_{size}": model.interpolate_pos_encoding(tokens, x.shape[-2], x.shape[-1]),
        }
        pattern = re.compile(rf"out\.intermediate_{size}_block(\d+)")
        blocks = sorted(int(m.group(1)) for k in fixture.io if (m := pattern.fullmatch(k)))
        if blocks:
            layers = model.get_intermediate_layers(x, blocks)
            for index, layer in zip(blocks, layers, strict=True):
                ours[f"out.intermediate_{size}_block{index}"] = layer
            ours[f"out.intermediate_{size}_concat"] = torch.cat(layers, dim=-1)
        checks += [compare(k, v, fixture.tensor(k), ATOL) for k, v in ours.items() if k in fixture.io]
    return _unchecked(fixture, checks)


#: ``intermediate.*`` io keys -> our submodule whose output they record.
_DIFFUSION_INTERMEDIATES = {
    "intermediate.time_embedding_out": "time_embedding",
    "intermediate.class_embedding_out": "class_embedding",
    "intermediate.trellis_t_emb": "t_embedder",
    "intermediate.mid_block_out": "mid_block",
}


@register_fixture_kind("diffusion_2d3d", modules=("SyncHuman_2D3DCrossSpaceDiffusion",))
def run_diffusion_2d3d(fixture: Fixture) -> list[Check]:
    """One CFG denoising step ``(v2d, v3d) = model(...)``; compares both outputs and the intermediates."""
    from synchuman.models.cross_space import SyncHuman_2D3DCrossSpaceDiffusion

    model = from_pretrained(fixture.path, SyncHuman_2D3DCrossSpaceDiffusion, device=fixture.device)
    device = fixture.device
    timestep = fixture.meta.get("timestep_python_value")
    if timestep is None:
        timestep = fixture.tensor("in.timestep").to(device)
    inputs = {
        name: fixture.tensor(f"in.{name}").to(device)
        for name in (
            "sample",
            "encoder_hidden_states",
            "class_labels",
            "trellis_x",
            "trellis_t",
            "trellis_cond",
        )
    }
    names = {k: v for k, v in _DIFFUSION_INTERMEDIATES.items() if k in fixture.io}
    with _capture(model, names) as captured:
        v2d, v3d = model(timestep=timestep, **inputs)
    checks = [
        compare("out.sample", v2d, fixture.tensor("out.sample"), DIFFUSION_ATOL),
        compare("out.trellis", v3d, fixture.tensor("out.trellis"), DIFFUSION_ATOL),
    ]
    checks += [compare(k, captured[k], fixture.tensor(k), DIFFUSION_ATOL) for k in sorted(names)]
    return _unchecked(fixture, checks, ("out.", "intermediate."))
