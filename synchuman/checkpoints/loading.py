"""Strict checkpoint loading shared by every model.

Conventions:
- A model folder holds ``config.json`` and ``model.safetensors``. ``config.json`` is either TRELLIS style
  ``{"name": "<Class>", "args": {...}}`` or diffusers style ``{"_class_name": "<Class>", ...kwargs}``
  (keys starting with ``_`` are dropped).
- Loading is strict: every missing, unexpected or mis-shaped key is reported in ONE :class:`CheckpointError`.
- The weights file is the first of :data:`~synchuman.checkpoints.layout.WEIGHT_CANDIDATES` that exists
  (``model.safetensors``, diffusers' ``diffusion_pytorch_model.safetensors``, ...); it must be safetensors.
- Model classes are listed under their config name in :data:`synchuman.models.registry.MODEL_MODULES`, so
  :func:`from_pretrained` can build them from the folder alone; a class can also be passed explicitly.

Usage::

    model = from_pretrained("ckpts/SecondStage/ckpts/slat_flow", dtype=torch.float16, device="cuda")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from synchuman.checkpoints.layout import WEIGHT_CANDIDATES, weights_file
from synchuman.models.registry import MODEL_MODULES, model_class

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class CheckpointError(Exception):
    """A checkpoint does not fit the model (lists every offending key) or cannot be read."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"|"fp16"|"bf16"`` (or long names, or a torch dtype) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16") from None


def registered_model(name: str) -> Callable[..., nn.Module]:
    """The class of config name ``name`` (:data:`~synchuman.models.registry.MODEL_MODULES`);
    ``CheckpointError`` listing the known names otherwise."""
    cls = model_class(name)
    if cls is None:
        known = ", ".join(sorted(MODEL_MODULES))
        raise CheckpointError(f"no model class registered for config name {name!r}; known: {known}")
    return cls


def read_config(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """Read ``folder/config.json`` -> ``(class name, constructor kwargs)``."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist; a model folder needs {CONFIG_NAME} + {WEIGHTS_NAME}"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if "name" in config and "args" in config:
        return str(config["name"]), dict(config["args"])
    if "_class_name" in config:
        return str(config["_class_name"]), {k: v for k, v in config.items() if not k.startswith("_")}
    raise CheckpointError(f"{path}: expected {{'name', 'args'}} or a diffusers '_class_name' config")


def read_safetensors(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file; floating tensors are converted to ``dtype`` when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several internal types for corrupt files
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """Raise one :class:`CheckpointError` listing missing, unexpected and mis-shaped keys (if any)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [f"checkpoint does not match {what}:"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {len(items)} {label} key(s): " + ", ".join(items))
    raise CheckpointError("\n".join(lines))


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model"
) -> None:
    """Check (see :func:`check_state_dict`) then copy ``state_dict`` into ``model`` (dtype of the model kept).

    A model built on the meta device gets the checkpoint tensors assigned instead of copied.
    """
    check_state_dict(model, state_dict, what)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(dict(state_dict), strict=True, assign=on_meta)


def from_pretrained(
    folder: str | Path,
    cls: Callable[..., nn.Module] | None = None,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the model described by ``folder/config.json`` and load ``folder/model.safetensors`` strictly.

    Args:
        folder: model folder.
        cls: model class/factory; default: the class registered under the config name.
        dtype: parameter dtype after loading (fp32/fp16/bf16); integer buffers are untouched.
        device: target device.
        overrides: extra constructor kwargs (e.g. structural overrides of hard-coded upstream sizes).
    Returns:
        the model in eval mode.
    """
    folder = Path(folder)
    name, args = read_config(folder)
    factory = cls or registered_model(name)
    args.update(overrides or {})
    path = weights_file(folder)
    if path is None:
        raise CheckpointError(
            f"weights file {folder / WEIGHTS_NAME} does not exist "
            f"(nor any of {', '.join(WEIGHT_CANDIDATES[1:])})"
        )
    if not path.name.endswith(".safetensors"):
        raise CheckpointError(f"{path}: only a single safetensors weights file can be loaded")
    with torch.device("meta"):
        try:
            model = factory(**args)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder / CONFIG_NAME}: cannot build {name}: {exc}") from exc
    state_dict = read_safetensors(path)
    load_state_dict_strict(model, state_dict, what=f"{name} ({folder})")
    left_on_meta = [k for k, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    left_on_meta += [k for k, t in model.named_buffers() if t.is_meta]
    if left_on_meta:
        names = ", ".join(sorted(set(left_on_meta)))
        raise CheckpointError(f"{name}: tensors not restored from the checkpoint: {names}")
    return model.to(device=device, dtype=parse_dtype(dtype)).eval()
