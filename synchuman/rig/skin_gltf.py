"""Reading the one triangle mesh of a GLB and writing it back skinned: joint nodes, a skin with inverse bind
matrices, per-vertex JOINTS_0/WEIGHTS_0 and animations, appended to the GLB's JSON and binary chunks.

trimesh's exporter writes no skins, so this edits the glTF directly; the input's buffers, images, textures,
materials and mesh stay as they are (the primitive gains the two attributes). The bind pose is the pose of
the joints given: every joint node carries only its translation from its parent, so the inverse bind matrix
of joint ``j`` is ``inverse(T(joint_j)) @ mesh_world``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_FLOAT, _UNSIGNED_SHORT = 5126, 5123
_COMPONENTS = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_ARRAY_BUFFER = 34962


class GlbError(ValueError):
    """The GLB is not a single triangle mesh this module can skin; the message says what is wrong."""


@dataclass
class Glb:
    """A parsed GLB: its JSON document and binary chunk."""

    gltf: dict
    binary: bytearray

    @classmethod
    def parse(cls, data: bytes) -> Glb:
        if len(data) < 20 or struct.unpack_from("<I", data, 0)[0] != _MAGIC:
            raise GlbError("not a GLB file (no glTF magic)")
        length, chunk_type = struct.unpack_from("<II", data, 12)
        if chunk_type != _JSON:
            raise GlbError("the GLB's first chunk is not JSON")
        gltf = json.loads(data[20 : 20 + length])
        binary = bytearray()
        at = 20 + length
        if at + 8 <= len(data):
            blen, btype = struct.unpack_from("<II", data, at)
            if btype == _BIN:
                binary = bytearray(data[at + 8 : at + 8 + blen])
        return cls(gltf, binary)

    def to_bytes(self) -> bytes:
        self.gltf["buffers"] = [{"byteLength": len(self.binary)}]
        text = json.dumps(self.gltf, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 4)
        binary = bytes(self.binary) + b"\0" * (-len(self.binary) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join(
            [
                struct.pack("<III", _MAGIC, 2, total),
                struct.pack("<II", len(text), _JSON),
                text,
                struct.pack("<II", len(binary), _BIN),
                binary,
            ]
        )

    def read_accessor(self, index: int) -> np.ndarray:
        """Accessor ``index`` as an array ``[count, width]`` (no sparse accessors)."""
        acc = self.gltf["accessors"][index]
        if "sparse" in acc or "bufferView" not in acc:
            raise GlbError(f"accessor {index} is sparse or has no buffer view")
        view = self.gltf["bufferViews"][acc["bufferView"]]
        if view.get("buffer", 0) != 0:
            raise GlbError("only the GLB's own binary buffer is supported")
        dtype = np.dtype(_COMPONENTS[acc["componentType"]]).newbyteorder("<")
        width = _WIDTH[acc["type"]]
        stride = view.get("byteStride") or dtype.itemsize * width
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        count = acc["count"]
        raw = np.frombuffer(
            self.binary, np.uint8, count=max(0, (count - 1) * stride + dtype.itemsize * width), offset=start
        )
        rows = np.lib.stride_tricks.as_strided(raw, (count, dtype.itemsize * width), (stride, 1))
        return np.ascontiguousarray(rows).view(dtype).reshape(count, width)

    def add_accessor(
        self, data: np.ndarray, kind: str, target: int | None = None, bounds: bool = False
    ) -> int:
        """Append ``data [count, width]`` (float32 / uint16) as a new buffer view and accessor; its index."""
        data = np.ascontiguousarray(data)
        component = _FLOAT if data.dtype == np.float32 else _UNSIGNED_SHORT
        self.binary += b"\0" * (-len(self.binary) % 4)
        view = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": data.nbytes}
        if target is not None:
            view["target"] = target
        self.binary += data.astype(data.dtype.newbyteorder("<")).tobytes()
        self.gltf.setdefault("bufferViews", []).append(view)
        acc = {
            "bufferView": len(self.gltf["bufferViews"]) - 1,
            "componentType": component,
            "count": int(data.shape[0]),
            "type": kind,
        }
        if bounds:
            acc["min"] = data.min(0).reshape(-1).tolist()
            acc["max"] = data.max(0).reshape(-1).tolist()
        self.gltf.setdefault("accessors", []).append(acc)
        return len(self.gltf["accessors"]) - 1


def _node_matrix(node: dict) -> np.ndarray:
    """Local 4x4 transform of a glTF node (matrix, or translation/rotation/scale)."""
    if "matrix" in node:
        return np.array(node["matrix"], dtype=np.float64).reshape(4, 4).T
    x, y, z, w = node.get("rotation", (0.0, 0.0, 0.0, 1.0))
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    out = np.eye(4)
    out[:3, :3] = rot * np.asarray(node.get("scale", (1.0, 1.0, 1.0)))[None]
    out[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return out


@dataclass(frozen=True)
class MeshData:
    """The GLB's triangle mesh: ``positions [V, 3]`` float32 in the scene's (world) frame, ``faces [F, 3]``
    int64, the mesh node's ``world`` 4x4 transform and index."""

    positions: np.ndarray
    faces: np.ndarray
    world: np.ndarray
    node: int


def read_mesh(glb: Glb) -> MeshData:
    """The one mesh node of ``glb`` with one indexed triangle primitive; :class:`GlbError` otherwise."""
    nodes = glb.gltf.get("nodes", [])
    mesh_nodes = [i for i, n in enumerate(nodes) if "mesh" in n]
    if len(mesh_nodes) != 1 or len(glb.gltf.get("meshes", [])) != 1:
        raise GlbError(f"the GLB must hold exactly one mesh node, found {len(mesh_nodes)}")
    if any("skin" in n for n in nodes) or glb.gltf.get("skins"):
        raise GlbError("the GLB is already skinned")
    primitives = glb.gltf["meshes"][0]["primitives"]
    if len(primitives) != 1 or primitives[0].get("mode", 4) != 4 or "indices" not in primitives[0]:
        raise GlbError("the GLB's mesh must be one indexed triangle primitive")
    prim = primitives[0]
    positions = glb.read_accessor(prim["attributes"]["POSITION"]).astype(np.float64)
    faces = glb.read_accessor(prim["indices"]).reshape(-1, 3).astype(np.int64)
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
    world, at = np.eye(4), mesh_nodes[0]
    while at is not None:
        world = _node_matrix(nodes[at]) @ world
        at = parent.get(at)
    placed = positions @ world[:3, :3].T + world[:3, 3]
    return MeshData(placed.astype(np.float32), faces, world, mesh_nodes[0])


@dataclass(frozen=True)
class Animation:
    """A looped rotation animation: ``times [K]`` seconds and per joint name its local rotations
    ``[K, 4]`` (unit quaternions x, y, z, w) relative to the bind pose."""

    name: str
    times: np.ndarray
    rotations: dict[str, np.ndarray]


def write_skinned(
    glb: Glb,
    mesh: MeshData,
    names: tuple[str, ...],
    parents: dict[str, str | None],
    positions: dict[str, np.ndarray],
    joint_index: np.ndarray,
    joint_weight: np.ndarray,
    animations: tuple[Animation, ...] = (),
) -> bytes:
    """The GLB with the skeleton ``names`` (parents first; ``positions`` world-frame ``(3,)``), the skin
    ``joint_index [V, 4]`` uint16 / ``joint_weight [V, 4]`` float32 and ``animations``.

    The mesh node becomes a root without a transform (glTF ignores a skinned mesh node's transform; the
    inverse bind matrices carry it) and the joints' root joins the scene."""
    gltf = glb.gltf
    nodes = gltf["nodes"]
    first = len(nodes)
    mesh_node = {
        k: v
        for k, v in nodes[mesh.node].items()
        if k not in ("matrix", "translation", "rotation", "scale", "children")
    }
    for node in nodes:  # the mesh node leaves its parent
        if mesh.node in node.get("children", []):
            node["children"] = [c for c in node["children"] if c != mesh.node]
            if not node["children"]:
                del node["children"]
    nodes[mesh.node] = mesh_node
    index = {name: first + k for k, name in enumerate(names)}
    for name in names:
        parent = parents[name]
        offset = positions[name] - (positions[parent] if parent else 0.0)
        nodes.append({"name": name, "translation": [float(x) for x in offset]})
    for name in names:
        parent = parents[name]
        if parent:
            nodes[index[parent]].setdefault("children", []).append(index[name])
    roots = [index[n] for n in names if parents[n] is None]
    inverse_bind = np.stack([np.linalg.inv(_translation(positions[n])) @ mesh.world for n in names])
    ibm = glb.add_accessor(inverse_bind.transpose(0, 2, 1).reshape(-1, 16).astype(np.float32), "MAT4")
    gltf["skins"] = [{"joints": [index[n] for n in names], "inverseBindMatrices": ibm, "skeleton": roots[0]}]
    mesh_node["skin"] = 0
    prim = gltf["meshes"][0]["primitives"][0]
    prim["attributes"]["JOINTS_0"] = glb.add_accessor(joint_index.astype(np.uint16), "VEC4", _ARRAY_BUFFER)
    prim["attributes"]["WEIGHTS_0"] = glb.add_accessor(joint_weight.astype(np.float32), "VEC4", _ARRAY_BUFFER)
    scene = gltf["scenes"][gltf.get("scene", 0)]
    scene["nodes"] = [n for n in scene["nodes"] if n != mesh.node] + [mesh.node] + roots
    for anim in animations:
        times = glb.add_accessor(anim.times.astype(np.float32)[:, None], "SCALAR", bounds=True)
        samplers, channels = [], []
        for name, quats in anim.rotations.items():
            out = glb.add_accessor(quats.astype(np.float32), "VEC4")
            channels.append({"sampler": len(samplers), "target": {"node": index[name], "path": "rotation"}})
            samplers.append({"input": times, "output": out, "interpolation": "LINEAR"})
        gltf.setdefault("animations", []).append(
            {"name": anim.name, "samplers": samplers, "channels": channels}
        )
    return glb.to_bytes()


def _translation(p: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = p
    return out
