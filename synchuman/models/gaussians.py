"""3D Gaussians decoded from a structured latent (TRELLIS ``Gaussian`` conventions, SH degree 0).

The GS decoder emits, per voxel, ``num_gaussians`` Gaussians in the channel layout
``_xyz 3 | _features_dc 3 | _scaling 3 | _rotation 4 | _opacity 1`` (each field Gaussian-major). Raw fields
are turned into :class:`Gaussians` (activated values) by :meth:`RawGaussians.activate`. The object is in the
``[-0.5, 0.5]^3`` box, z up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional

# order and size per Gaussian of the raw fields in the decoder output
FIELDS = (("_xyz", 3), ("_features_dc", 3), ("_scaling", 3), ("_rotation", 4), ("_opacity", 1))
SH_C0 = 0.28209479177387814  # degree-0 spherical-harmonics constant: colour = 0.5 + SH_C0 * features_dc


def radical_inverse(base: int, n: int) -> float:
    """Van der Corput radical inverse of ``n`` in ``base``."""
    value, scale = 0.0, 1.0 / base
    while n > 0:
        n, digit = divmod(n, base)
        value += digit * scale
        scale /= base
    return value


def offset_perturbation(num_gaussians: int, voxel_size: float) -> torch.Tensor:
    """``atanh((hammersley(i) * 2 - 1) / voxel_size)`` with ``hammersley(i) = (i / n, r_2(i), r_3(i))``.

    Returns fp32 ``[num_gaussians, 3]``: pre-tanh offsets that spread a voxel's Gaussians evenly.
    """
    points = [[i / num_gaussians, radical_inverse(2, i), radical_inverse(3, i)] for i in range(num_gaussians)]
    return torch.atanh((torch.tensor(points, dtype=torch.float32) * 2 - 1) / voxel_size)


@dataclass(frozen=True)
class GaussianConstants:
    """Activation constants of the representation (from the decoder's ``representation_config``)."""

    scaling_bias: float = 0.004
    opacity_bias: float = 0.1
    min_kernel_size: float = 9e-4  # "3d_filter_kernel_size"
    scaling_activation: str = "softplus"

    @property
    def scale_bias(self) -> float:
        """Pre-activation scale offset: inverse softplus (or log) of ``scaling_bias``."""
        if self.scaling_activation == "exp":
            return math.log(self.scaling_bias)
        return self.scaling_bias + math.log(-math.expm1(-self.scaling_bias))

    @property
    def opacity_logit_bias(self) -> float:
        """``logit(opacity_bias)``."""
        return math.log(self.opacity_bias / (1 - self.opacity_bias))


@dataclass
class Gaussians:
    """Activated Gaussians of one object (all fp32, ``N`` Gaussians).

    Attributes:
        xyz: ``[N, 3]`` centres in the ``[-0.5, 0.5]^3`` box.
        scales: ``[N, 3]`` standard deviations (already including the minimum kernel size).
        quats: ``[N, 4]`` unit rotation quaternions ``(w, x, y, z)``.
        opacities: ``[N, 1]`` in ``(0, 1)``.
        features_dc: ``[N, 3]`` degree-0 SH coefficients (see :attr:`colors`).
    """

    xyz: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    features_dc: torch.Tensor

    @property
    def colors(self) -> torch.Tensor:
        """``[N, 3]`` RGB (``0.5 + SH_C0 * features_dc``, not clamped)."""
        return 0.5 + SH_C0 * self.features_dc

    def __len__(self) -> int:
        return self.xyz.shape[0]


@dataclass
class RawGaussians:
    """Gaussian fields as stored upstream (``_xyz`` in ``[0, 1]^3`` box units, pre-activation others).

    Shapes: ``_xyz`` ``[N, 3]``, ``_features_dc`` ``[N, 1, 3]``, ``_scaling`` ``[N, 3]``, ``_rotation``
    ``[N, 4]``, ``_opacity`` ``[N, 1]``.
    """

    _xyz: torch.Tensor
    _features_dc: torch.Tensor
    _scaling: torch.Tensor
    _rotation: torch.Tensor
    _opacity: torch.Tensor
    constants: GaussianConstants

    def activate(self) -> Gaussians:
        """Apply the activations: ``xyz - 0.5``, ``sqrt(act(s + b)^2 + k^2)``, ``normalize(q + [1,0,0,0])``,
        ``sigmoid(o + logit(bias))``."""
        c = self.constants
        raw_scale = self._scaling + c.scale_bias
        act = torch.exp(raw_scale) if c.scaling_activation == "exp" else functional.softplus(raw_scale)
        scales = torch.sqrt(act.square() + c.min_kernel_size**2)
        rots_bias = self._rotation.new_tensor([1.0, 0.0, 0.0, 0.0])
        return Gaussians(
            xyz=self._xyz - 0.5,
            scales=scales,
            quats=functional.normalize(self._rotation + rots_bias, dim=-1),
            opacities=torch.sigmoid(self._opacity + c.opacity_logit_bias),
            features_dc=self._features_dc.reshape(-1, 3),
        )
