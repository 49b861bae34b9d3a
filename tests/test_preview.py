"""Previews (issue 21 item 4): a front 3/4 thumbnail and a turntable rendered from the textured mesh with the
project's rasteriser, on a neutral background with soft light, encoded as PNG, H.264 MP4 and animated WebP."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from benchlib.meshes import body_mesh

from synchuman.postprocess import preview
from synchuman.postprocess.uv_atlas import parametrize

BACKGROUND = np.round(np.array(preview.BACKGROUND) * 255)


@pytest.fixture(scope="module")
def shown() -> preview.PreviewMesh:
    """The synthetic person with a texture whose left half is red and right half blue (in UV space)."""
    verts, faces = body_mesh(48)
    atlas = parametrize(verts, faces, 128)
    texture = np.zeros((128, 128, 3), np.uint8)
    texture[:, :64] = (200, 40, 40)
    texture[:, 64:] = (40, 40, 200)
    return preview.preview_mesh(
        atlas.vertices, atlas.faces, atlas.uvs, texture, atlas.vertex_map, torch.device("cpu")
    )


def test_thumbnail_shows_the_textured_lit_person_on_the_background(shown) -> None:
    image = preview.thumbnail(shown, 512)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    np.testing.assert_array_equal(corners, np.tile(BACKGROUND, (4, 1)))
    person = np.any(np.abs(image.astype(int) - BACKGROUND) > 8, axis=-1)
    assert 0.05 < person.mean() < 0.6  # framed: the body fills a good part of the picture, not all of it
    colours = image[person].astype(int)
    assert (colours[:, 0] > colours[:, 2] + 40).mean() > 0.1  # the red texels...
    assert (colours[:, 2] > colours[:, 0] + 40).mean() > 0.1  # ...and the blue ones are seen
    # soft light, inside the silhouette (its edge pixels are blended with the background): the red texels
    # are lit between the ambient share and full, never black
    inside = person.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            inside &= np.roll(person, shift, axis=axis)
    inner = image[inside].astype(int)
    red = inner[inner[:, 0] > inner[:, 2] + 40][:, 0]
    assert red.min() >= 0.9 * preview.AMBIENT * 200 and red.max() <= 201


def test_turntable_turns_and_encodes_as_mp4_and_webp(shown) -> None:
    import av
    from PIL import Image

    frames = preview.turntable(shown, frames=24, size=64)
    assert frames.shape == (24, 64, 64, 3)
    assert np.abs(frames[0].astype(int) - frames[6].astype(int)).mean() > 1  # a quarter turn differs
    files = preview.preview_files(preview.thumbnail(shown, 128), frames)
    assert set(files) == {"preview.png", "turntable.mp4", "turntable.webp"}
    with av.open(io.BytesIO(files["turntable.mp4"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert float(stream.average_rate) == preview.FPS
    assert len(decoded) == 24 and decoded[0].shape == (64, 64, 3)
    assert np.abs(decoded[6].astype(int) - frames[6].astype(int)).mean() < 12  # lossy, but the same picture
    webp = Image.open(io.BytesIO(files["turntable.webp"]))
    assert webp.is_animated and webp.n_frames == 24 and webp.info["loop"] == 0
    assert Image.open(io.BytesIO(files["preview.png"])).size == (128, 128)
