"""The stage-2 models as one loaded unit: flow model + sampler settings + latent normalisation + decoders.

Loads the upstream ``SecondStage`` layout::

    SecondStage/pipeline.json          sampler name/args/params, slat_normalization, model folders
    SecondStage/ckpts/slat_flow/       config.json + model.safetensors
    SecondStage/ckpts/decoder_GS/      ...
    SecondStage/ckpts/decoder_Mesh/    ...

and runs the structured-latent part of stage 2 with tensors in and out (DINOv2 conditioning and multiview
features are computed by the caller): :meth:`Stage2Models.sample_latent` (noise -> de-normalised latent on
the given voxels, with a per-step progress callback and a stop check between steps) and
:meth:`Stage2Models.decode` (latent -> activated ``Gaussians`` + ``Mesh``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synchuman.checkpoints.loading import CheckpointError, from_pretrained, parse_dtype
from synchuman.models.flexicubes import Mesh
from synchuman.models.gaussians import Gaussians
from synchuman.models.slat_decoders import SLatGaussianDecoder, SLatMeshDecoder
from synchuman.models.slat_flow import SLatFlowModel
from synchuman.samplers.flow_euler import FlowEulerGuidanceIntervalSampler, LatentNormalization
from synchuman.sparse import SparseTensor

PIPELINE_JSON = "pipeline.json"
SAMPLER_NAME = "FlowEulerGuidanceIntervalSampler"
# pipeline.json "models" keys and the class each one must be
COMPONENTS = {
    "slat_flow_model": SLatFlowModel,
    "slat_decoder_gs": SLatGaussianDecoder,
    "slat_decoder_mesh": SLatMeshDecoder,
}


@dataclass(frozen=True)
class SamplerParams:
    """``pipeline.json`` ``slat_sampler.params``: defaults of one sampling run."""

    steps: int = 25
    cfg_strength: float = 5.0
    cfg_interval: tuple[float, float] = (0.5, 1.0)
    rescale_t: float = 3.0


def _stage2_dir(source: Any) -> Path:
    """The folder holding ``pipeline.json``: a ``CheckpointLayout`` (``.stage2``), ``SecondStage/`` or its
    ``ckpts/`` subfolder."""
    folder = Path(getattr(source, "stage2", source))
    for candidate in (folder, folder.parent):
        if (candidate / PIPELINE_JSON).is_file():
            return candidate
    raise CheckpointError(
        f"no {PIPELINE_JSON} in {folder} or its parent; expected the SecondStage checkpoint folder"
    )


def _interval(values: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    return low, high


@dataclass(frozen=True)
class PipelineConfig:
    """The parts of ``pipeline.json`` stage 2 needs."""

    models: dict[str, Path]  # COMPONENTS key -> model folder
    sigma_min: float
    params: SamplerParams
    normalization: LatentNormalization


def read_pipeline_config(stage2_dir: Path) -> PipelineConfig:
    """Parse ``stage2_dir/pipeline.json``; ``CheckpointError`` naming what is wrong."""
    path = stage2_dir / PIPELINE_JSON
    try:
        args = json.loads(path.read_text())["args"]
        sampler = args["slat_sampler"]
        models = {key: stage2_dir / args["models"][key] for key in COMPONENTS}
        normalization = LatentNormalization.from_dict(args["slat_normalization"])
        params = sampler.get("params", {})
        config = PipelineConfig(
            models=models,
            sigma_min=float(sampler.get("args", {}).get("sigma_min", 1e-5)),
            params=SamplerParams(
                steps=int(params.get("steps", 25)),
                cfg_strength=float(params.get("cfg_strength", 5.0)),
                cfg_interval=_interval(params.get("cfg_interval", (0.5, 1.0))),
                rescale_t=float(params.get("rescale_t", 3.0)),
            ),
            normalization=normalization,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: not a usable stage-2 pipeline config ({type(exc).__name__}: {exc})"
        ) from None
    if sampler.get("name") != SAMPLER_NAME:
        raise CheckpointError(
            f"{path}: sampler {sampler.get('name')!r} is not supported (only {SAMPLER_NAME})"
        )
    return config


@dataclass
class Stage2Models:
    """Loaded stage-2 models and settings (see the module docstring)."""

    flow: SLatFlowModel
    decoder_gs: SLatGaussianDecoder
    decoder_mesh: SLatMeshDecoder
    sampler: FlowEulerGuidanceIntervalSampler
    sampler_params: SamplerParams
    normalization: LatentNormalization

    @property
    def resolution(self) -> int:
        """Voxel grid size of the latent (64)."""
        return self.flow.resolution

    @property
    def latent_channels(self) -> int:
        return self.flow.input_layer.in_features

    @property
    def device(self) -> torch.device:
        return self.flow.input_layer.weight.device

    def sample_latent(
        self,
        coords: torch.Tensor,
        cond: torch.Tensor,
        *,
        seed: int = 0,
        steps: int | None = None,
        cfg_strength: float | None = None,
        cfg_interval: Sequence[float] | None = None,
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        cuda_graph: bool = False,
    ) -> SparseTensor:
        """Sample the structured latent of one object.

        Args:
            coords: int ``[N, 3]`` occupied voxels in ``[0, resolution)`` (or ``[N, 4]`` with batch column 0).
            cond: ``[1, L, C]`` conditioning tokens (DINOv2 ``x_prenorm`` layer-normed); the negative
                condition is zeros.
            seed: noise seed (CPU generator, so every device draws the same noise).
            steps / cfg_strength / cfg_interval: override the ``pipeline.json`` defaults.
            callback: ``callback(step, total)`` after each step; should_stop: checked before each step
                (raises :class:`~synchuman.samplers.flow_euler.SamplingCancelled`).
            cuda_graph: replay CUDA graphs of the model forward (CUDA only).
        Returns:
            the de-normalised fp32 latent ``[N, latent_channels]`` on ``(0, x, y, z)`` coordinates.
        """
        coords = torch.as_tensor(coords).to(self.device, torch.int32)
        if coords.dim() != 2 or coords.shape[1] not in (3, 4) or coords.shape[0] == 0:
            raise ValueError(f"coords must be a non-empty [N, 3] voxel list; got {tuple(coords.shape)}")
        if coords.shape[1] == 3:
            coords = torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)
        if int(coords[:, 1:].min()) < 0 or int(coords[:, 1:].max()) >= self.resolution:
            raise ValueError(f"voxel coordinates must lie in [0, {self.resolution})")
        params = self.sampler_params
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(coords.shape[0], self.latent_channels, generator=generator).to(self.device)
        cond = cond.to(self.device)
        result = self.sampler.sample(
            self.flow,
            SparseTensor(noise, coords),
            cond=cond,
            neg_cond=torch.zeros_like(cond),
            steps=steps or params.steps,
            rescale_t=params.rescale_t,
            cfg_strength=params.cfg_strength if cfg_strength is None else cfg_strength,
            cfg_interval=tuple(cfg_interval or params.cfg_interval),
            callback=callback,
            should_stop=should_stop,
            cuda_graph=cuda_graph,
        )
        latent = result.samples
        return latent.replace(self.normalization.denormalize(latent.feats.float()))

    def decode(
        self, latent: SparseTensor, mv_color: torch.Tensor, mv_normal: torch.Tensor
    ) -> tuple[Gaussians, Mesh]:
        """Gaussians and mesh of one object from its de-normalised latent and ``[1, 4, 64, 64, 4 D]``
        colour / normal multiview features."""
        gaussians = self.decoder_gs(latent, mv_color, mv_normal)[0]
        mesh = self.decoder_mesh(latent, mv_color, mv_normal)[0]
        return gaussians, mesh


def load_stage2_models(
    source: Any, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32"
) -> Stage2Models:
    """Load the stage-2 models strictly from ``source`` (a ``CheckpointLayout``, ``SecondStage/`` or
    ``SecondStage/ckpts/``) onto ``device`` with parameters in ``dtype`` (fp32/fp16/bf16)."""
    config = read_pipeline_config(_stage2_dir(source))
    torch_dtype = parse_dtype(dtype)

    def load(key: str) -> Any:
        return from_pretrained(config.models[key], COMPONENTS[key], dtype=torch_dtype, device=device)

    return Stage2Models(
        flow=load("slat_flow_model"),
        decoder_gs=load("slat_decoder_gs"),
        decoder_mesh=load("slat_decoder_mesh"),
        sampler=FlowEulerGuidanceIntervalSampler(config.sigma_min),
        sampler_params=config.params,
        normalization=config.normalization,
    )
