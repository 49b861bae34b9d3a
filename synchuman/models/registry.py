"""Config name -> model module: the one list of the models that
:func:`~synchuman.checkpoints.loading.from_pretrained` and the checkpoint tools build from a folder's
``config.json`` alone.

The class is named like its config name; :func:`model_class` imports only the module asked for (looking up a
stage-2 decoder does not import diffusers for the stage-1 model).
"""

from __future__ import annotations

import importlib

from torch import nn

#: ``config.json`` name (TRELLIS ``name`` / diffusers ``_class_name``) -> module defining that class.
MODEL_MODULES: dict[str, str] = {
    "DinoVisionTransformer": "synchuman.models.dinov2",
    "SparseStructureDecoder": "synchuman.models.ss_decoder",
    "SyncHuman_2D3DCrossSpaceDiffusion": "synchuman.models.cross_space",
    "SLatFlowModel": "synchuman.models.slat_flow",
    "SLatGaussianDecoder": "synchuman.models.slat_decoders",
    "SLatMeshDecoder": "synchuman.models.slat_decoders",
}


def model_class(name: str) -> type[nn.Module] | None:
    """The model class of config name ``name``, or ``None`` when no model of ours has that name."""
    if name not in MODEL_MODULES:
        return None
    return getattr(importlib.import_module(MODEL_MODULES[name]), name)
