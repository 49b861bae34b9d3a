"""Shared helpers for writing tiny random checkpoints in the real on-disk format.

A tiny checkpoint is a model folder exactly like a real one (``config.json`` + weights file) whose model is
small and whose parameters are random but well scaled, so a forward pass gives finite, non-trivial values.
Buffers keep the values the constructor computed (formulas such as position tables, not learned weights).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from synchuman.checkpoints.loading import CONFIG_NAME, WEIGHTS_NAME, read_config, registered_model


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """Fill every parameter of ``model`` in place from a generator seeded with ``seed``.

    Matrices/kernels get ``N(0, 1/fan_in)`` (fan_in = product of all but the first dim), 1-D ``*.bias`` and
    other vectors get ``N(0, 0.02)``, 1-D ``weight``/``gamma`` (norm scales) get ``1 + N(0, 0.1)``.
    The noise is drawn on ``device`` (the parameters' device; a GPU makes full-size models fast).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32, device=device)
        if param.ndim >= 2:
            value = noise / math.sqrt(max(1, math.prod(param.shape[1:])))
        elif name.endswith(("weight", "gamma")):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.02 * noise
        param.copy_(value.to(param.dtype))
    return model


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors with no shared storage (what safetensors requires)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_model_folder(
    folder: Path, config: dict[str, Any], seed: int, weights_name: str = WEIGHTS_NAME, pickle: bool = False
) -> nn.Module:
    """Build the registered model of ``config``, randomise it and write ``folder/config.json`` + weights.

    Args:
        folder: model folder to create.
        config: TRELLIS style ``{"name", "args"}`` or diffusers style ``{"_class_name", ...}`` config.
        seed: parameter seed.
        weights_name: weights file name (``model.safetensors`` unless the real release uses another name).
        pickle: write the weights as a torch pickle (``torch.save`` of the state dict) instead of safetensors.
    Returns:
        the randomised model (fp32, CPU).
    """
    write_json(folder / CONFIG_NAME, config)
    name, args = read_config(folder)
    model = randomize_(registered_model(name)(**args), seed)
    tensors = state_dict_for_saving(model)
    if pickle:
        torch.save(tensors, folder / weights_name)
    else:
        save_file(tensors, str(folder / weights_name))
    return model
