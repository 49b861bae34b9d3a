"""Where a stage-1 service's start-up load time goes: imports, checkpoint verification and each component.

Times, in one fresh process, what ``Stage1PipelineBackend.load`` does before the warm-up: importing torch,
diffusers and transformers, verifying the checkpoint tree, and loading every component onto the device (the
diffusion model, the sparse-structure decoder, the VAE, the CLIP image encoder and DINOv2), each timed after a
device synchronisation. Prints a table.

Device command (``.whl`` carried, checkpoints made first)::

    python3 bench/bench_load.py --ckpts /tmp/ckpts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpts", required=True, type=Path)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="fp16")
    args = parser.parse_args()
    rows: list[tuple[str, float]] = []
    last = [STARTED]

    def mark(label: str) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        rows.append((label, now - last[0]))
        last[0] = now

    import torch

    mark("import torch")
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    mark("import diffusers + transformers")
    torch.zeros(1, device=args.device)
    mark("CUDA context")
    from diffusers import AutoencoderKL
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from services.common.backend import verified_checkpoints
    from synchuman.checkpoints.loading import from_pretrained, parse_dtype
    from synchuman.models.cross_space import SyncHuman_2D3DCrossSpaceDiffusion
    from synchuman.models.dinov2 import DinoV2Encoder
    from synchuman.models.ss_decoder import SparseStructureDecoder

    mark("import synchuman + services")
    layout = verified_checkpoints(args.ckpts, ("dinov2", "stage1"))
    mark("verify checkpoint tree")
    dtype, device = parse_dtype(args.dtype), args.device
    from_pretrained(layout.diffusion_2d3d, SyncHuman_2D3DCrossSpaceDiffusion, dtype=dtype, device=device)
    mark("diffusion model")
    from_pretrained(layout.ss_decoder, SparseStructureDecoder, dtype=dtype, device=device)
    mark("sparse-structure decoder")
    AutoencoderKL.from_pretrained(str(layout.vae), torch_dtype=dtype, local_files_only=True).to(device)
    mark("VAE (diffusers)")
    CLIPVisionModelWithProjection.from_pretrained(
        str(layout.image_encoder), torch_dtype=dtype, local_files_only=True
    ).to(device)
    CLIPImageProcessor.from_pretrained(str(layout.feature_extractor_config.parent))
    mark("CLIP image encoder + processor (transformers)")
    DinoV2Encoder.from_checkpoints(layout, device, dtype)
    mark("DINOv2")
    print("| step | seconds |\n|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")
    print(f"| **total** | {sum(s for _, s in rows):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
