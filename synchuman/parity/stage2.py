"""Parity fixture kinds of stage 2: ``slat_flow``, ``sampler``, ``decoder_gs``, ``decoder_mesh``.

Every runner builds our model from the fixture's ``config.json`` (plus ``meta.json`` structural overrides),
loads ``model.safetensors`` strictly, replays the recorded call and compares every ``out.*`` tensor; the
intermediates ``mid.*`` that correspond to one of our submodules are compared too (they localise a failure).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from synchuman.checkpoints.loading import from_pretrained
from synchuman.parity.registry import Check, Fixture, compare, register_fixture_kind
from synchuman.sparse import SparseTensor

ATOL = 1e-4
SAMPLER_ATOL = 5e-4

# meta.json structural_overrides keys -> constructor kwargs of our decoders
_OVERRIDE_ARGS = {
    "SparseTransformerBlock.mv_dim": "block_mv_dim",
    "SparseSubdivideBlock3d.num_groups": "subdivide_num_groups",
}


def _overrides(fixture: Fixture) -> dict[str, object]:
    unknown = set(fixture.structural_overrides) - set(_OVERRIDE_ARGS)
    if unknown:
        raise ValueError(f"unknown structural_overrides in meta.json: {', '.join(sorted(unknown))}")
    return {_OVERRIDE_ARGS[k]: v for k, v in fixture.structural_overrides.items()}


def _load(fixture: Fixture, cls: type[nn.Module]) -> nn.Module:
    return from_pretrained(fixture.path, cls, device=fixture.device, overrides=_overrides(fixture))


def _sparse(fixture: Fixture, prefix: str) -> SparseTensor:
    feats = fixture.tensor(f"{prefix}.feats").to(fixture.device)
    coords = fixture.tensor(f"{prefix}.coords").to(fixture.device)
    return SparseTensor(feats, coords)


@contextmanager
def _capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, object]]:
    """Record the outputs of the named submodules (tensors or SparseTensors) while inside."""
    captured: dict[str, object] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        if name in modules:

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                captured[name] = out

            handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _mid_names(fixture: Fixture) -> list[str]:
    """Submodule names with a recorded ``mid.<name>`` (feats or plain tensor)."""
    names = set()
    for key in fixture.io:
        if key.startswith("mid."):
            name = key[4:]
            names.add(name[: -len(".feats")] if name.endswith(".feats") else name)
    return sorted(names)


def _mid_checks(fixture: Fixture, captured: dict[str, object]) -> list[Check]:
    """Compare captured submodule outputs with ``mid.<name>[.feats|.coords]``."""
    checks = []
    for name, value in sorted(captured.items()):
        if isinstance(value, SparseTensor):
            ref = fixture.tensor(f"mid.{name}.feats")
            checks.append(compare(f"mid.{name}.feats", value.feats, ref, ATOL))
            if f"mid.{name}.coords" in fixture.io:
                ref = fixture.tensor(f"mid.{name}.coords")
                checks.append(compare(f"mid.{name}.coords", value.coords, ref, 0.0))
        elif isinstance(value, torch.Tensor):
            key = f"mid.{name}.feats" if f"mid.{name}.feats" in fixture.io else f"mid.{name}"
            checks.append(compare(key, value, fixture.tensor(key), ATOL))
    return checks


def _all_outputs_checked(fixture: Fixture, checks: list[Check]) -> list[Check]:
    """Append a failing check naming every recorded ``out.*`` tensor no check compared (unless some check
    already failed, which can legitimately stop later comparisons)."""
    unchecked = sorted({k for k in fixture.io if k.startswith("out.")} - {c.name for c in checks})
    if unchecked and all(c.passed for c in checks):
        checks.append(
            Check("unchecked outputs", len(unchecked), 0, False, ", ".join(unchecked), numeric=False)
        )
    return checks


@register_fixture_kind("slat_flow", modules=("SLatFlowModel",))
def run_slat_flow(fixture: Fixture) -> list[Check]:
    """``out = model(x, t, cond)``; compares ``out.feats`` / ``out.coords`` and the recorded stages."""
    from synchuman.models.slat_flow import SLatFlowModel

    model = _load(fixture, SLatFlowModel)
    x = _sparse(fixture, "in.x")
    t = fixture.tensor("in.t").to(fixture.device)
    cond = fixture.tensor("in.cond").to(fixture.device)
    names = [n if n != "t_emb" else "t_embedder" for n in _mid_names(fixture)]
    with _capture(model, names) as captured:
        out = model(x, t, cond)
    if "t_embedder" in captured:
        captured["t_emb"] = captured.pop("t_embedder")
    checks = [
        compare("out.feats", out.feats, fixture.tensor("out.feats"), ATOL),
        compare("out.coords", out.coords, fixture.tensor("out.coords"), 0.0),
    ]
    return _all_outputs_checked(fixture, checks + _mid_checks(fixture, captured))


@register_fixture_kind("sampler", modules=("FlowEulerGuidanceIntervalSampler",))
def run_sampler(fixture: Fixture) -> list[Check]:
    """The guided Euler sampler with the fixture's flow model; compares samples, every step, the schedule
    and the de-normalised latent."""
    from synchuman.models.slat_flow import SLatFlowModel
    from synchuman.samplers.flow_euler import FlowEulerGuidanceIntervalSampler, LatentNormalization, timesteps

    model = _load(fixture, SLatFlowModel)
    params = fixture.meta["fixture_params"]
    sampler = FlowEulerGuidanceIntervalSampler(**fixture.meta.get("sampler_args", {}))
    noise = _sparse(fixture, "in.noise")
    result = sampler.sample(
        model,
        noise,
        cond=fixture.tensor("in.cond").to(fixture.device),
        neg_cond=fixture.tensor("in.neg_cond").to(fixture.device),
        steps=int(params["steps"]),
        rescale_t=float(params["rescale_t"]),
        cfg_strength=float(params["cfg_strength"]),
        cfg_interval=tuple(params["cfg_interval"]),
        keep_trajectory=True,
    )
    checks = [
        compare("out.samples.feats", result.samples.feats, fixture.tensor("out.samples.feats"), SAMPLER_ATOL),
        compare("out.samples.coords", result.samples.coords, fixture.tensor("out.samples.coords"), 0.0),
    ]
    for i, (x_prev, x_0) in enumerate(zip(result.pred_x_prev, result.pred_x_0, strict=True)):
        for name, ours in ((f"out.step{i}.pred_x_prev", x_prev), (f"out.step{i}.pred_x_0", x_0)):
            checks.append(compare(name, ours, fixture.tensor(name), SAMPLER_ATOL))
    norm = LatentNormalization.from_dict(fixture.meta["slat_normalization"])
    checks.append(
        compare(
            "out.slat_denormalized.feats",
            norm.denormalize(result.samples.feats),
            fixture.tensor("out.slat_denormalized.feats"),
            SAMPLER_ATOL,
        )
    )
    schedule = {"t_seq_fixture": (params["steps"], params["rescale_t"])}
    real = fixture.meta.get("pipeline_params")
    if real:
        schedule["t_seq_real25"] = (real["steps"], real["rescale_t"])
    for key, (steps, rescale) in schedule.items():
        if key in fixture.io:
            ours = torch.from_numpy(timesteps(int(steps), float(rescale)))
            checks.append(compare(key, ours, fixture.tensor(key), 1e-12))
    return _all_outputs_checked(fixture, checks)


def _decoder_inputs(fixture: Fixture) -> tuple[SparseTensor, torch.Tensor, torch.Tensor]:
    device = fixture.device
    return (
        _sparse(fixture, "in.x"),
        fixture.tensor("in.mv_color").to(device),
        fixture.tensor("in.mv_normal").to(device),
    )


def _voxel_mv_checks(
    fixture: Fixture, model: nn.Module, x: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor
) -> list[Check]:
    from synchuman.models.slat_decoders import voxel_multiview_features

    checks = []
    for name, layer, maps in (
        ("mid.voxel_mv_normal", model.input_layer_normal, mv_normal),
        ("mid.voxel_mv_color", model.input_layer_color, mv_color),
    ):
        if name in fixture.io:
            ours = voxel_multiview_features(x.coords, layer(maps), model.mv_condition_mode)
            checks.append(compare(name, ours, fixture.tensor(name), ATOL))
    return checks


@register_fixture_kind("decoder_gs", modules=("SLatGaussianDecoder",))
def run_decoder_gs(fixture: Fixture) -> list[Check]:
    """``model(x, mv_color, mv_normal)``; compares the raw and activated Gaussian fields of every item."""
    from synchuman.models.slat_decoders import SLatGaussianDecoder

    model = _load(fixture, SLatGaussianDecoder)
    x, mv_color, mv_normal = _decoder_inputs(fixture)
    with _capture(model, _mid_names(fixture)) as captured:
        features = model.decode_features(x, mv_color, mv_normal)
    checks = _mid_checks(fixture, captured) + _voxel_mv_checks(fixture, model, x, mv_color, mv_normal)
    items = model.to_gaussians(features)
    recorded = sorted({int(k.split(".")[1]) for k in fixture.io if k.startswith("out.")})
    if recorded != list(range(len(items))):
        raise ValueError(f"fixture records items {recorded}; the model produced {len(items)}")
    for i, raw in enumerate(items):
        act = raw.activate()
        ours = {
            "_xyz": raw._xyz,
            "_features_dc": raw._features_dc,
            "_scaling": raw._scaling,
            "_rotation": raw._rotation,
            "_opacity": raw._opacity,
            "get_xyz": act.xyz,
            "get_scaling": act.scales,
            "get_rotation": act.quats,
            "get_opacity": act.opacities,
            "get_features": act.features_dc.reshape(-1, 1, 3),
        }
        for name, value in ours.items():
            key = f"out.{i}.{name}"
            if key in fixture.io:
                checks.append(compare(key, value, fixture.tensor(key), ATOL))
    return _all_outputs_checked(fixture, checks)


@register_fixture_kind("decoder_mesh", modules=("SLatMeshDecoder",))
def run_decoder_mesh(fixture: Fixture) -> list[Check]:
    """Raw decoded features numerically; our FlexiCubes on the fixture's own raw features topologically."""
    from synchuman.models.flexicubes import mesh_from_features
    from synchuman.models.slat_decoders import SLatMeshDecoder
    from synchuman.parity.mesh_compare import compare_meshes

    model = _load(fixture, SLatMeshDecoder)
    x, mv_color, mv_normal = _decoder_inputs(fixture)
    with _capture(model, _mid_names(fixture)) as captured:
        model.decode_features(x, mv_color, mv_normal)
    checks = _mid_checks(fixture, captured) + _voxel_mv_checks(fixture, model, x, mv_color, mv_normal)
    coords = fixture.tensor("mid.out_layer.coords").to(fixture.device)
    feats = fixture.tensor("mid.out_layer.feats").to(fixture.device)
    reference = SparseTensor(feats, coords)
    for i in range(reference.batch_size):
        item = reference.item(i)
        mesh = mesh_from_features(item.coords[:, 1:], item.feats, model.mesh_resolution, model.use_color)
        checks += compare_meshes(f"out.{i}", mesh, fixture, ATOL)
    return _all_outputs_checked(fixture, checks)
