"""The preprocess service's resident memory stays flat after warm-up (issue 17: "RSS within 10 % over 50
jobs"; it once went 638 MB -> 1.03 GB).

A real ``synchuman serve preprocess`` process (its RSS is what is measured) gets direct requests: cutouts
(the mask comes from the alpha channel) in two sizes and, every 10th request (and the 6th), a photo without
alpha, which the default segmenter masks (seconds on one loaded core, hence not more). RSS is read between
requests (the least of half a second's samples), after 10 warm-up requests and after 50 more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import numpy as np
from conftest import REPO_ROOT
from test_gateway_memory import MAX_GROWTH, settled_rss_mib
from test_preprocess_service import encode, reported_address, requests

from synchuman.v1 import preprocess_pb2_grpc

WARM_UP, MEASURED = 10, 50


def photos() -> tuple[bytes, list[bytes]]:
    """A person-like figure on a plain background (RGB: segmented), and as cutouts (RGBA) in 2 sizes."""
    found = []
    for height, width in ((640, 480), (900, 600)):
        y, x = np.mgrid[:height, :width]
        body = ((x - width / 2) / (width / 7)) ** 2 + ((y - height * 0.6) / (height * 0.35)) ** 2 < 1
        head = ((x - width / 2) / (width / 11)) ** 2 + ((y - height * 0.2) / (height * 0.1)) ** 2 < 1
        figure = body | head
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[...] = (235, 235, 230, 255)
        rgba[figure, :3] = np.stack([x % 200, y % 180, (x + y) % 160], -1)[figure]
        found.append(encode(np.ascontiguousarray(rgba[..., :3])))
        rgba[..., 3] = np.where(figure, 255, 0)
        found.append(encode(rgba))
    return found[0], found[1::2]


def call_all(stub, images: tuple[bytes, list[bytes]], first: int, count: int) -> None:
    photo, cutouts = images
    for index in range(first, first + count):
        image = photo if index % 10 == 0 or index == 5 else cutouts[index % 2]
        *_, last = stub.Preprocess(requests(image), timeout=120)
        assert last.WhichOneof("payload") == "result", f"request {index} ended without a result"


def test_preprocess_rss_is_flat_over_50_requests_after_warm_up(segmenter_dir) -> None:
    argv = [sys.executable, "-m", "synchuman_cli", "serve", "preprocess", "--address", "127.0.0.1:0"]
    argv += ["--segmentation-dir", str(segmenter_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, env=env)
    try:
        images = photos()
        with grpc.insecure_channel(reported_address(process)) as channel:
            stub = preprocess_pb2_grpc.PreprocessServiceStub(channel)
            call_all(stub, images, 0, WARM_UP)
            warm = settled_rss_mib(process.pid, 0.5)
            started = time.monotonic()
            call_all(stub, images, WARM_UP, MEASURED)
            end = settled_rss_mib(process.pid, 0.5)
        print(f"preprocess RSS {warm:.1f} -> {end:.1f} MiB ({time.monotonic() - started:.1f} s)")
        assert end <= warm * (1 + MAX_GROWTH), (
            f"preprocess RSS {warm:.1f} MiB after {WARM_UP} requests -> {end:.1f} MiB after {MEASURED} more"
        )
    finally:
        process.kill()
        process.wait()
