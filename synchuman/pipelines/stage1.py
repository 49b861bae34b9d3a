"""Stage 1: the framed photo -> 5 colour + 5 normal views and the occupied voxels of the 64^3 grid.

Checkpoint layout (:class:`~synchuman.checkpoints.layout.CheckpointLayout`, upstream ``ckpts/OneStage``)::

    OneStage/SyncHuman_2D3DCrossSpaceDiffusion/  config.json + diffusion_pytorch_model.safetensors (or
                                                 model.safetensors)
    OneStage/vae/                    diffusers AutoencoderKL folder
    OneStage/image_encoder/          transformers CLIPVisionModelWithProjection folder
    OneStage/feature_extractor/      CLIPImageProcessor preprocessor_config.json
    OneStage/sparse_structure_decoder/  config.json ({"name", "args"}) + weights
    OneStage/fixed_prompt_embeds_7view/{normal,clr}_embeds.pt   [7, 77, D] CLIP-text hidden states
    OneStage/text_encoder/, OneStage/tokenizer/   only needed when the prompt files are absent
    dinov2/config.json + dinov2_vitl14_reg4_pretrain.pth   (torch-hub weights)

The prompt files are not public; when absent they are computed from :data:`VIEW_PROMPTS` with the text encoder
and a CLIP tokenizer (``OneStage/tokenizer``); without a tokenizer loading fails naming the missing files.

Sampling (upstream ``SyncHumanOneStagePipeline.run``): views = 4 x the framed body + the face crop, both over
white; CLIP image embeddings + the noise-level-0 embedding as class labels; VAE ``mode() * scale`` image
latents; ``steps`` Euler steps over ``t = 3 s / (1 + 2 s)``, ``s = linspace(1, 0, steps + 1)`` for the 2D
latents and the 3D latent together, with CFG on both (2D batch ``[normal-uncond, normal-cond, colour-uncond,
colour-cond] x 5 views``: uncond has zero image latents / class labels; 3D batch ``[zero, DINOv2 cond]``).
Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in upstream's order (an unused draw
shaped like the CLIP embeddings, the 2D latents ``[10, 4, h, w]``, the 3D latent ``[1, 8, 16, 16, 16]``), so a
seed gives the same noise on every device. Decoding: the VAE in slices, colour view 0 replaced by the input,
the face normal (view 4) resized to the face box and pasted into normal view 0, occupancy ``logits > 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from synchuman.checkpoints.layout import CheckpointLayout, default_root
from synchuman.checkpoints.loading import CheckpointError, from_pretrained, parse_dtype
from synchuman.models.cross_space import SyncHuman_2D3DCrossSpaceDiffusion
from synchuman.models.dinov2 import DinoV2Encoder
from synchuman.models.ss_decoder import SparseStructureDecoder
from synchuman.options import Stage1Options
from synchuman.phases import PhaseTimer
from synchuman.pipelines.compiled_model import files_identity
from synchuman.pipelines.handoff import NUM_VIEWS, Stage1Output
from synchuman.pipelines.stage1_acceleration import Pair, Velocity, parallel_velocity
from synchuman.preprocess.framing import FACE_BOX, MULTIVIEW_SIZE, composite_on_white, face_crop
from synchuman.samplers.flow_euler import SamplingCancelled
from synchuman.samplers.flow_euler_cfg import FlowEulerCfgSampler
from synchuman.stopping import check_before_every_layer

log = logging.getLogger(__name__)

#: Rows of the 7-view prompt files used (front, right, back, left, face).
PROMPT_ROWS = (0, 2, 3, 4, 6)
#: Prompts the fixed embeddings are computed from when the files are absent (PSHuman's 7-view layout; the
#: wording follows its Era3D-style template, inferred: the released files were not inspected).
PROMPT_VIEWS = ("front", "front_right", "right", "back", "left", "front_left", "face")
VIEW_PROMPTS = {
    domain: [f"a rendering image of 3D models, {view} view, {domain} map." for view in PROMPT_VIEWS]
    for domain in ("normal", "color")
}
RESCALE_T = 3.0


def load_prompt_embeds(layout: CheckpointLayout) -> torch.Tensor:
    """Fixed prompt embeddings ``[10, 77, D]`` (normal x 5, colour x 5) from the files, or computed from
    :data:`VIEW_PROMPTS` when the files are absent and a tokenizer is available."""
    paths = (layout.normal_prompt_embeds, layout.color_prompt_embeds)
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        rows = []
        for path in paths:
            embeds = torch.load(path, map_location="cpu", weights_only=True)
            if (
                not isinstance(embeds, torch.Tensor)
                or embeds.dim() != 3
                or embeds.shape[0] <= max(PROMPT_ROWS)
            ):
                raise CheckpointError(f"{path}: expected a tensor [7, tokens, D]")
            rows.append(embeds[list(PROMPT_ROWS)].float())
        return torch.cat(rows)
    tokenizer_dir = layout.tokenizer
    if not (tokenizer_dir.is_dir() and layout.text_encoder.is_dir()):
        names = ", ".join(str(p) for p in missing)
        raise CheckpointError(
            f"fixed prompt embeddings missing: {names}. Copy them from PSHuman's "
            f"mvdiffusion/data/fixed_prompt_embeds_7view, or provide {tokenizer_dir} (CLIP tokenizer) and "
            f"{layout.text_encoder} so they can be computed"
        )
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(str(layout.text_encoder), local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for domain in ("normal", "color"):
            prompts = [VIEW_PROMPTS[domain][i] for i in PROMPT_ROWS]
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            out.append(encoder(ids).last_hidden_state.float())
    return torch.cat(out)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[V, 3, H, W]`` in [0, 1] -> uint8 ``[V, H, W, 3]`` (rounded)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Stage1Pipeline:
    """The stage-1 models on one device; :meth:`run` turns one framed photo into the stage-2 hand-off.

    Speed-ups (a CFG-parallel replica on a second device, FP8 layers, compilation) are set up by
    :mod:`synchuman.pipelines.stage1_acceleration`.
    """

    def __init__(
        self,
        diffusion: SyncHuman_2D3DCrossSpaceDiffusion,
        vae: nn.Module,
        image_encoder: nn.Module,
        image_processor: Any,
        ss_decoder: SparseStructureDecoder,
        dinov2: DinoV2Encoder,
        prompt_embeds: torch.Tensor,
        vae_slice: int = 2,
    ) -> None:
        self.diffusion, self.vae, self.image_encoder = diffusion, vae, image_encoder
        self.image_processor, self.ss_decoder, self.dinov2 = image_processor, ss_decoder, dinov2
        param = diffusion.conv_in.weight
        self.device, self.dtype = param.device, param.dtype
        self.prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        normal, color = self.prompt_embeds.chunk(2)
        #: ``[20, 77, D]``: ``[normal, normal, colour, colour]`` (uncond uses the same embeddings).
        self.prompt_embeds_cfg = torch.cat([normal, normal, color, color])
        self.vae_slice = vae_slice
        #: the diffusion model's files (names, sizes, times) when loaded by :meth:`from_pretrained`
        self.weights_identity: str | None = None
        self.sampler = FlowEulerCfgSampler(rescale_t=RESCALE_T)
        #: replica of ``diffusion`` computing the unconditional CFG half, and its device (``None``: off;
        #: :func:`~synchuman.pipelines.stage1_acceleration.enable_cfg_parallel`)
        self.cfg_diffusion: nn.Module | None = None
        self.cfg_device: torch.device | None = None
        self.vae_scale = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self.voxel_resolution = diffusion.grid * ss_decoder.upsample_factor
        self.sample_size, self.grid = diffusion.sample_size, diffusion.grid
        self.trellis_channels = diffusion.trellis_in_channels
        expected = (
            2 * NUM_VIEWS,
            diffusion.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.in_features,
        )
        if (self.prompt_embeds.shape[0], self.prompt_embeds.shape[-1]) != expected:
            raise CheckpointError(
                f"prompt embeddings {list(prompt_embeds.shape)} do not fit the model "
                f"(need {expected[0]} rows of width {expected[1]})"
            )
        if MULTIVIEW_SIZE // self.vae_factor != diffusion.sample_size:
            raise CheckpointError(
                f"the VAE maps {MULTIVIEW_SIZE}^2 views to {MULTIVIEW_SIZE // self.vae_factor}^2 latents "
                f"but the diffusion model's sample_size is {diffusion.sample_size}"
            )

    @classmethod
    def from_pretrained(
        cls, root: str | Path | None = None, device: str = "cuda", dtype: str = "float16"
    ) -> Stage1Pipeline:
        """Load every stage-1 component of the checkpoint tree ``root`` (default ``$SYNCHUMAN_CKPTS`` or
        ``./ckpts``; strict keys, see the module docstring) onto ``device`` in ``dtype`` (``float16``,
        ``bfloat16``, ``float32`` or the short names). It does not verify the tree: callers run
        :func:`~synchuman.checkpoints.verify.require_verified` first, which lists every problem at once."""
        # The PIL image processor by name: the default class wants torchvision (not a dependency of the core)
        # and prints a warning each load before falling back to this same class.
        from diffusers import AutoencoderKL
        from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

        layout = CheckpointLayout(Path(root) if root is not None else default_root())
        torch_dtype = parse_dtype(dtype)
        diffusion = from_pretrained(
            layout.diffusion_2d3d, SyncHuman_2D3DCrossSpaceDiffusion, dtype=torch_dtype, device=device
        )
        ss_decoder = from_pretrained(
            layout.ss_decoder, SparseStructureDecoder, dtype=torch_dtype, device=device
        )
        vae = AutoencoderKL.from_pretrained(str(layout.vae), torch_dtype=torch_dtype, local_files_only=True)
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            str(layout.image_encoder), torch_dtype=torch_dtype, local_files_only=True
        )
        processor = CLIPImageProcessorPil.from_pretrained(str(layout.feature_extractor_config.parent))
        dinov2 = DinoV2Encoder.from_checkpoints(layout, device, torch_dtype)
        pipeline = cls(
            diffusion,
            vae.to(device).eval(),
            encoder.to(device).eval(),
            processor,
            ss_decoder,
            dinov2,
            load_prompt_embeds(layout),
        )
        pipeline.weights_identity = files_identity(layout.diffusion_2d3d)
        return pipeline

    # -- conditioning ---------------------------------------------------------------------------------------
    def _views(self, framed: np.ndarray) -> torch.Tensor:
        """Body over white and face over white, float ``[2, 3, 768, 768]`` in [0, 1] (CPU)."""
        body = composite_on_white(framed)
        face = composite_on_white(face_crop(framed))
        return torch.from_numpy(np.stack([body, face])).permute(0, 3, 1, 2)

    def _image_conditions(self, views: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """CLIP class labels ``[20, 2 P]`` and image latents ``[20, 4, h, w]`` in the CFG batch layout."""
        pixels = (views * 255).to(torch.uint8)  # upstream's to_pil_image truncation
        clip_in = self.image_processor(images=list(pixels.permute(0, 2, 3, 1).numpy()), return_tensors="pt")
        clip_in = clip_in.pixel_values.to(self.device, self.image_encoder.dtype)
        embeds = self.image_encoder(clip_in).image_embeds.float()  # [2, P]
        per_view = embeds[[0, 0, 0, 0, 1]]
        torch.randn((2 * NUM_VIEWS, embeds.shape[-1]), generator=generator)  # upstream's unused noise draw
        half = embeds.shape[-1] // 2
        noise_level = torch.cat([torch.ones(half), torch.zeros(embeds.shape[-1] - half)]).to(self.device)
        labels = torch.cat([per_view, noise_level.expand(NUM_VIEWS, -1)], dim=1)
        vae_in = (pixels.float() / 255 * 2 - 1).to(self.device, self.vae.dtype)
        latents = self.vae.encode(vae_in).latent_dist.mode().float() * self.vae_scale
        latents = latents[[0, 0, 0, 0, 1]]
        zero_l, zero_c = torch.zeros_like(latents), torch.zeros_like(labels)
        class_labels = torch.cat([zero_c, labels, zero_c, labels]).to(self.dtype)
        image_latents = torch.cat([zero_l, latents, zero_l, latents]).to(self.dtype)
        return class_labels, image_latents

    # -- sampling -------------------------------------------------------------------------------------------
    def sample(
        self,
        latents: torch.Tensor,
        structure: torch.Tensor,
        class_labels: torch.Tensor,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        steps: int,
        guidance_scale: float,
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler flow sampling with CFG of both branches (:class:`FlowEulerCfgSampler`).

        Args:
            latents: fp32 ``[10, 4, h, w]`` (normal x 5, colour x 5); structure: fp32 ``[1, 8, G, G, G]``.
            class_labels / image_latents: ``[20, ...]`` CFG layout; cond: ``[1, L, D]`` DINOv2 tokens.
        Returns:
            the final ``(latents, structure)`` (fp32).
        """
        velocity = self._cfg_halves(class_labels, image_latents, cond)
        latents, structure = self.sampler.sample(
            velocity, (latents, structure), steps, guidance_scale, callback, should_stop
        )
        return latents, structure

    def _cfg_halves(
        self, class_labels: torch.Tensor, image_latents: torch.Tensor, cond: torch.Tensor
    ) -> Velocity:
        """``velocity(latents, structure, timestep)`` -> ``((uncond_2d, cond_2d), (uncond_3d, cond_3d))``,
        fp32 on the main device, each 2D half ``[10, 4, h, w]`` (normal x 5, colour x 5).

        Joint: one forward of the CFG batch ``[normal-u, normal-c, colour-u, colour-c]`` (20) + 3D ``[u, c]``.
        With a CFG replica: :func:`~synchuman.pipelines.stage1_acceleration.parallel_velocity`.
        """
        trellis_cond = torch.cat([torch.zeros_like(cond), cond]).to(self.dtype)
        if self.cfg_diffusion is not None:
            return parallel_velocity(self, class_labels, image_latents, trellis_cond)

        def joint(latents: torch.Tensor, structure: torch.Tensor, t: float) -> tuple[Pair, Pair]:
            normal, color = latents.to(self.dtype).chunk(2)
            sample = torch.cat([torch.cat([normal, normal, color, color]), image_latents], dim=1)
            trellis_x = torch.cat([structure, structure]).to(self.dtype)
            timestep = torch.full((1,), t, device=self.device)  # a tensor: no recompiles per step
            v2d, v3d = self.diffusion(
                sample, timestep, self.prompt_embeds_cfg, class_labels, trellis_x, timestep, trellis_cond
            )
            nu, nc, cu, cc = v2d.float().chunk(4)
            u3, c3 = v3d.float().chunk(2)
            return (torch.cat([nu, cu]), torch.cat([nc, cc])), (u3, c3)

        return joint

    def decode_views(self, latents: torch.Tensor) -> torch.Tensor:
        """``[10, 4, h, w]`` -> ``[10, 3, 768, 768]`` in [0, 1], ``vae_slice`` images at a time."""
        out = []
        for chunk in (latents / self.vae_scale).split(self.vae_slice):
            image = self.vae.decode(chunk.to(self.vae.dtype)).sample
            out.append((image.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def _stop_inside_networks(self, should_stop: Callable[[], bool] | None) -> AbstractContextManager[None]:
        """On a CPU, check ``should_stop`` before every layer of every stage-1 network (one pass of the CLIP
        encoder, the VAE, a diffusion step or the structure decoder can take seconds there)."""
        if should_stop is None:
            return nullcontext()
        dinov2 = getattr(self.dinov2, "model", None)
        networks = (self.image_encoder, self.vae, dinov2, self.diffusion, self.cfg_diffusion, self.ss_decoder)

        def check() -> None:
            if should_stop():
                raise SamplingCancelled("stage 1 stopped on request")

        return check_before_every_layer(networks, self.device, check)

    @torch.inference_mode()
    def run(
        self,
        framed: np.ndarray,
        conditioning: np.ndarray,
        options: Stage1Options,
        callback: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Stage1Output:
        """Framed RGBA uint8 ``[768, 768, 4]`` + conditioning crop uint8 ``[518, 518, 3]`` -> views + voxels.

        ``options``: seed, Euler steps and guidance weight (:class:`~synchuman.options.OptionError`, a
        ``ValueError``, when out of range). ``callback(step, steps)`` runs after every sampler step;
        ``should_stop()`` is checked before each step (and on a CPU before every layer of every network, in
        every phase) and raises :class:`~synchuman.samplers.flow_euler.SamplingCancelled`.
        """
        if framed.shape != (MULTIVIEW_SIZE, MULTIVIEW_SIZE, 4) or framed.dtype != np.uint8:
            raise ValueError(
                f"framed image must be uint8 [768, 768, 4]; got {framed.dtype} {list(framed.shape)}"
            )
        options.validate()
        timer = PhaseTimer(self.device)
        replica_on_gpu = self.cfg_device is not None and self.cfg_device.type == "cuda"
        if replica_on_gpu:
            torch.cuda.reset_peak_memory_stats(self.cfg_device)
        with self._stop_inside_networks(should_stop), timer("encode"):
            generator = torch.Generator().manual_seed(options.seed)
            views = self._views(framed)
            class_labels, image_latents = self._image_conditions(views, generator)
            cond = self.dinov2.condition(conditioning).to(self.dtype)
            size = self.diffusion.sample_size
            latents = torch.randn((2 * NUM_VIEWS, self.latent_channels, size, size), generator=generator)
            grid = self.diffusion.grid
            structure = torch.randn(
                (1, self.diffusion.trellis_in_channels, grid, grid, grid), generator=generator
            )
        with self._stop_inside_networks(should_stop), timer("sample"):
            latents, structure = self.sample(
                latents.to(self.device),
                structure.to(self.device),
                class_labels,
                image_latents,
                cond,
                options.steps,
                options.guidance_scale,
                callback,
                should_stop,
            )
        with self._stop_inside_networks(should_stop), timer("decode"):
            images = self.decode_views(latents)
            normals, colors = images[:NUM_VIEWS], images[NUM_VIEWS:].clone()
            colors[0] = views[0].to(colors.device)
            x0, y0, x1, y1 = FACE_BOX
            face = functional.interpolate(
                normals[-1:], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
            )
            normals[0, :, y0:y1, x0:x1] = face[0]
            logits = self.ss_decoder(structure)
            coords = torch.argwhere(logits[0, 0] > 0).to(torch.int32).cpu().numpy()
        extra: dict[str, object] = {
            "timings": {k: round(v, 3) for k, v in timer.seconds.items()},
            "voxels": int(coords.shape[0]),
        }
        if timer.peak_gib:
            extra["peak_gpu_gib"] = {k: round(v, 2) for k, v in timer.peak_gib.items()}
        if replica_on_gpu:
            extra["cfg_device_peak_gib"] = round(torch.cuda.max_memory_allocated(self.cfg_device) / 2**30, 2)
        log.info("stage 1 done", extra=extra)
        timings = dict(timer.seconds)
        return Stage1Output(_to_uint8(colors), _to_uint8(normals), coords, timings)
