"""Key -> shape maps of checkpoint files and of models built from their configs, without loading weights.

Files: safetensors headers are read with ``safe_open`` slices (no tensor data is read); torch pickles
(``.pth``/``.bin``/``.pt``) are opened with ``torch.load(mmap=True, weights_only=True)`` so tensors stay
memory-mapped. Models: built on the meta device from ``config.json`` through the model registry
(:mod:`synchuman.models.registry`), falling back to the diffusers / transformers class of the same name for
the stock stage-1 components (VAE, CLIP image encoder, CLIP text encoder).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synchuman.checkpoints.loading import CONFIG_NAME, CheckpointError, read_config, registered_model

Shapes = dict[str, tuple[int, ...]]


def file_shapes(path: Path) -> Shapes:
    """Key -> shape of every tensor in a weights file (``.safetensors`` or a torch pickle of a state dict)."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.name.endswith(".index.json"):
        return _sharded_shapes(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises several internal types for corrupt/truncated files
            raise CheckpointError(f"cannot read {path} (corrupt or incomplete download?): {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds
        raise CheckpointError(f"cannot read {path} (corrupt or incomplete download?): {exc}") from exc
    if isinstance(obj, torch.Tensor):
        return {"": tuple(obj.shape)}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a tensor or a flat state dict of tensors")
    return {str(k): tuple(v.shape) for k, v in obj.items()}


def _sharded_shapes(index: Path) -> Shapes:
    """Key -> shape over the shards named by a ``*.index.json`` (each key must be in the shard it names)."""
    try:
        weight_map = dict(json.loads(index.read_text())["weight_map"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a weights index with a 'weight_map': {exc}") from None
    shapes: Shapes = {}
    for shard in sorted(set(weight_map.values())):
        found = file_shapes(index.parent / shard)
        absent = sorted(k for k, name in weight_map.items() if name == shard and k not in found)
        if absent:
            raise CheckpointError(f"{index.parent / shard} lacks keys its index names: {absent[:5]}")
        shapes.update(found)
    return shapes


def _library_class(name: str) -> Any:
    """The diffusers or transformers class called ``name`` (``None`` if neither library has one)."""
    for library in ("diffusers", "transformers"):
        try:
            module = importlib.import_module(library)
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    return None


def build_meta_model(folder: Path, device: str | torch.device = "meta") -> tuple[str, nn.Module]:
    """Build the model described by ``folder/config.json`` on the meta device -> ``(class name, model)``.

    Accepts TRELLIS (``name``/``args``), diffusers (``_class_name``) and transformers (``architectures``)
    configs. Another ``device`` builds a real (randomly initialised) model there.
    """
    path = folder / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and "architectures" in raw and "_class_name" not in raw:
        name = str(raw["architectures"][0])
        cls = _library_class(name)
        if cls is None:
            raise CheckpointError(f"{path}: transformers has no class {name!r} (is transformers installed?)")
        with torch.device(device):
            return name, cls(cls.config_class.from_pretrained(str(folder)))
    name, args = read_config(folder)
    try:
        factory = registered_model(name)
    except CheckpointError:
        cls = _library_class(name)
        if cls is None:
            raise
        with torch.device(device):
            return name, cls.from_config({k: v for k, v in raw.items() if not k.startswith("_")})
    try:
        with torch.device(device):
            return name, factory(**args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {name}: {exc}") from exc


def model_shapes(model: nn.Module) -> Shapes:
    """Key -> shape of the model's state dict."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_shapes(found: Shapes, expected: Shapes, limit: int = 12) -> list[str]:
    """Human-readable differences between a file's keys/shapes and the model's (empty when they match).

    At most ``limit`` keys are named per category, followed by a count of the rest.
    """

    def listing(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:limit])
        rest = f", ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"{len(items)} {label} key(s): {shown}{rest}"

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k} (file {list(found[k])} vs model {list(expected[k])})"
        for k in set(found) & set(expected)
        if found[k] != expected[k]
    )
    out = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            out.append(listing(label, items))
    return out
