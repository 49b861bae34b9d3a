"""Gaussian PLY (issue 21 item 5) in the layout of the reference 3DGS code that the common viewers read,
read back with plyfile: field names and order, float32, pre-activation values in their ranges."""

from __future__ import annotations

import io

import numpy as np
import torch
from benchlib.meshes import body_mesh, surface_gaussians

from synchuman.postprocess import export

NAMES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)


def test_ply_reads_back_with_the_3dgs_fields_and_activations() -> None:
    from plyfile import PlyData

    verts, faces = body_mesh(40)
    g = surface_gaussians(torch.from_numpy(verts), torch.from_numpy(faces), 500, 0.01)
    raw_quats = g.quats.numpy() * 3.0  # not unit: the writer normalises
    data = export.gaussian_ply(
        g.xyz.numpy(), g.features_dc.numpy(), g.scales.numpy(), raw_quats, g.opacities.numpy()
    )
    ply = PlyData.read(io.BytesIO(data))
    assert ply.text is False and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == NAMES
    assert all(vertex[name].dtype == np.float32 for name in NAMES)
    assert vertex.count == len(g.xyz)
    xyz = np.stack([vertex[a] for a in "xyz"], axis=1)
    np.testing.assert_allclose(xyz, g.xyz.numpy(), atol=1e-6)
    assert np.abs(xyz).max() <= 0.5 + 1e-6  # the box
    opacity = 1 / (1 + np.exp(-vertex["opacity"].astype(np.float64)))  # sigmoid of the logit
    np.testing.assert_allclose(opacity, g.opacities.numpy().reshape(-1), atol=1e-5)
    scales = np.exp(np.stack([vertex[f"scale_{i}"] for i in range(3)], axis=1))  # exp of the log
    np.testing.assert_allclose(scales, g.scales.numpy(), rtol=1e-5)
    assert (vertex["scale_0"] < 0).all()  # log of sub-unit standard deviations
    rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        rot, g.quats.numpy() / np.linalg.norm(g.quats.numpy(), axis=1)[:, None], atol=1e-5
    )
    colour = 0.5 + 0.28209479177387814 * np.stack([vertex[f"f_dc_{i}"] for i in range(3)], axis=1)
    np.testing.assert_allclose(colour, g.colors.numpy(), atol=1e-5)
    assert (vertex["nx"] == 0).all()
