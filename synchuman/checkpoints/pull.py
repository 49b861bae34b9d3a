"""``synchuman ckpts pull``: download the real weights into the checkpoint layout.

Sources (each overridable through an environment variable, e.g. to use a mirror):
- the SyncHuman release on the Hugging Face hub, repo ``xishushu/SyncHuman`` (its ``ckpts/OneStage`` and
  ``ckpts/SecondStage`` folders), endpoint ``$HF_ENDPOINT`` (default ``https://huggingface.co``);
- DINOv2 ViT-L/14-reg4 torch-hub weights, ``$SYNCHUMAN_DINOV2_URL``;
- the fixed prompt embeddings upstream reads from PSHuman's repository, ``$SYNCHUMAN_PROMPT_EMBEDS_URL``
  (a folder URL holding ``normal_embeds.pt`` and ``clr_embeds.pt``), pinned to one commit;
- the person segmenter, through ``scripts/fetch_segmenter.py`` (a PyPI wheel);
- the rig step's pose model (``mediapipe==0.10.14``'s BlazePose ``.tflite`` files, a PyPI wheel).

Every host is probed first with a short TCP connect timeout, so an offline machine fails within seconds with
one message naming what could not be reached. The hub files are downloaded (resumably) into
``<root>/.download/hf`` and hard-linked into place; upstream hub ids in config files are then resolved to
local paths (``SecondStage/pipeline.json``: ``image_cond_model`` -> ``../dinov2``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from synchuman.checkpoints.dinov2_config import REAL_DINOV2_CONFIG
from synchuman.checkpoints.layout import (
    DINOV2_HUB_ID,
    DINOV2_LOCAL_REF,
    DINOV2_WEIGHTS_NAME,
    PROMPT_EMBEDS_NAMES,
    REPO_ROOT,
    CheckpointLayout,
)
from synchuman.checkpoints.loading import CONFIG_NAME, CheckpointError
from synchuman.checkpoints.shapes import file_shapes
from synchuman.checkpoints.verify import TINY_MARKER

log = logging.getLogger(__name__)

HF_REPO = "xishushu/SyncHuman"
HF_FOLDERS = ("OneStage", "SecondStage")
DINOV2_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{DINOV2_WEIGHTS_NAME}"
PSHUMAN_COMMIT = "44352a0b285a1d55537138b3374d8c22bf055ebf"
PROMPT_EMBEDS_URL = (
    f"https://raw.githubusercontent.com/pengHTYX/PSHuman/{PSHUMAN_COMMIT}/mvdiffusion/data/fixed_prompt_embeds_7view"
)
SEGMENTER_SCRIPT = REPO_ROOT / "scripts" / "fetch_segmenter.py"
READ_TIMEOUT_S = 60.0


class OfflineError(Exception):
    """A download source cannot be reached (the message names each one and why)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Sources:
    """Where ``pull`` downloads from (defaults: the public release; environment variables override)."""

    hf_endpoint: str = field(default_factory=lambda: _env("HF_ENDPOINT", "https://huggingface.co"))
    hf_repo: str = HF_REPO
    dinov2_url: str = field(default_factory=lambda: _env("SYNCHUMAN_DINOV2_URL", DINOV2_URL))
    prompt_embeds_url: str = field(
        default_factory=lambda: _env("SYNCHUMAN_PROMPT_EMBEDS_URL", PROMPT_EMBEDS_URL)
    )

    def urls(self) -> list[str]:
        return [self.hf_endpoint, self.dinov2_url, self.prompt_embeds_url]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise OfflineError(f"not a URL with a host: {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _connect(host: str, port: int, timeout_s: float, results: dict[tuple[str, int], str | None]) -> None:
    """Record ``None`` when a TCP connection to ``host:port`` opens, else the reason."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        results[(host, port)] = None
    except OSError as exc:
        results[(host, port)] = exc.strerror or exc.__class__.__name__


def probe(urls: list[str], timeout_s: float) -> None:
    """Open and close a TCP connection to each distinct host of ``urls``; ``OfflineError`` lists failures.

    The hosts are probed in parallel daemon threads and the whole probe takes at most about ``timeout_s``
    (a name lookup that hangs, which the socket timeout does not bound, counts as a failure).
    """
    targets = list(dict.fromkeys(_host_port(u) for u in urls))
    results: dict[tuple[str, int], str | None] = {}
    threads = [threading.Thread(target=_connect, args=(*t, timeout_s, results), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    failures = [
        f"{host}:{port} ({results.get((host, port), 'no answer')})"
        for host, port in targets
        if results.get((host, port), "no answer") is not None
    ]
    if failures:
        raise OfflineError(
            "cannot reach " + ", ".join(failures) + f" within {timeout_s:g} s: this machine looks offline. "
            "`synchuman ckpts pull` needs network access; on an offline machine copy a checkpoint tree here "
            "and check it with `synchuman ckpts verify`, or point HF_ENDPOINT / SYNCHUMAN_DINOV2_URL / "
            "SYNCHUMAN_PROMPT_EMBEDS_URL at a reachable mirror."
        )


def download(url: str, target: Path) -> None:
    """Stream ``url`` to ``target`` through a ``.partial`` file (replaced atomically when complete)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    log.info("downloading", extra={"url": url, "target": str(target)})
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response, partial.open("wb") as out:
        expected = int(response.headers.get("Content-Length") or -1)
        shutil.copyfileobj(response, out, length=1 << 20)
    if expected >= 0 and partial.stat().st_size != expected:
        partial.unlink()
        raise OSError(f"{url}: got {partial.stat().st_size} bytes, expected {expected}")
    os.replace(partial, target)


def _readable(path: Path) -> bool:
    """True when ``path`` exists and its tensor header/pickle can be read."""
    try:
        return bool(file_shapes(path))
    except CheckpointError:
        return False


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror the files of ``src`` into ``dst`` as hard links (copies across file systems)."""
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def pull_release(layout: CheckpointLayout, sources: Sources) -> None:
    """Download ``ckpts/OneStage`` and ``ckpts/SecondStage`` of the hub release and link them into place."""
    from huggingface_hub import snapshot_download

    cache = layout.root / ".download" / "hf"
    snapshot_download(
        sources.hf_repo, local_dir=cache, endpoint=sources.hf_endpoint,
        allow_patterns=[f"ckpts/{name}/*" for name in HF_FOLDERS],
    )
    for name in HF_FOLDERS:
        src = cache / "ckpts" / name
        if not src.is_dir():
            raise CheckpointError(f"{sources.hf_repo} has no ckpts/{name} folder: the release layout changed")
        _link_tree(src, layout.root / name)


def resolve_hub_ids(layout: CheckpointLayout) -> None:
    """Point hub ids in upstream config files at local paths (``image_cond_model`` -> ``../dinov2``)."""
    path = layout.stage2_pipeline
    config = json.loads(path.read_text())
    if config.get("args", {}).get("image_cond_model") == DINOV2_HUB_ID:
        config["args"]["image_cond_model"] = DINOV2_LOCAL_REF
        path.unlink()  # may be a hard link into the download cache: write a new file instead
        path.write_text(json.dumps(config, indent=4) + "\n")


def pull_dinov2(layout: CheckpointLayout, sources: Sources, force: bool) -> None:
    """DINOv2 weights (skipped when present and readable, unless ``force``) plus our ``config.json``."""
    if force or not _readable(layout.dinov2_weights):
        download(sources.dinov2_url, layout.dinov2_weights)
    (layout.dinov2 / CONFIG_NAME).write_text(json.dumps(REAL_DINOV2_CONFIG, indent=2) + "\n")


def pull_prompt_embeds(layout: CheckpointLayout, sources: Sources, force: bool) -> None:
    """The two fixed prompt-embedding tensors (skipped when present and readable, unless ``force``)."""
    for name in PROMPT_EMBEDS_NAMES:
        target = layout.prompt_embeds_dir / name
        if force or not _readable(target):
            download(f"{sources.prompt_embeds_url.rstrip('/')}/{name}", target)


def pull_segmenter(layout: CheckpointLayout) -> str | None:
    """Run ``scripts/fetch_segmenter.py``'s ``fetch`` into the layout; returns a warning when it cannot."""
    if not SEGMENTER_SCRIPT.is_file():
        return f"{SEGMENTER_SCRIPT} not found: segmenter not fetched"
    spec = importlib.util.spec_from_file_location("synchuman_fetch_segmenter", SEGMENTER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.fetch(layout.segmentation)
    except (RuntimeError, OSError) as exc:
        return f"segmenter not fetched: {exc}"
    return None


def pull_pose_model(layout: CheckpointLayout) -> str | None:
    """Extract the pose model files into the layout (:mod:`synchuman.rig.pose_files`); a warning if not."""
    from synchuman.checkpoints.wheel_models import fetch_from_wheel
    from synchuman.rig.pose_files import POSE_MODELS

    try:
        fetch_from_wheel(POSE_MODELS, layout.pose)
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        return f"pose model not fetched: {exc}"
    return None


def pull(
    root: Path,
    sources: Sources | None = None,
    connect_timeout_s: float = 5.0,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Download everything into ``root``; returns warnings. ``OfflineError`` at once when offline.

    Tiny random checkpoints found in ``root`` are replaced (their stage folders are removed first).
    """
    sources = sources or Sources()
    layout = CheckpointLayout(root)
    probe(sources.urls(), connect_timeout_s)
    layout.root.mkdir(parents=True, exist_ok=True)
    marker = layout.root / TINY_MARKER
    if marker.is_file():
        say("replacing the tiny random checkpoints")
        for name in (*HF_FOLDERS, layout.dinov2.name):
            shutil.rmtree(layout.root / name, ignore_errors=True)
        marker.unlink()
        force = True
    say(f"downloading {sources.hf_repo} from {sources.hf_endpoint}")
    pull_release(layout, sources)
    resolve_hub_ids(layout)
    say(f"downloading DINOv2 from {sources.dinov2_url}")
    pull_dinov2(layout, sources, force)
    say(f"downloading prompt embeddings from {sources.prompt_embeds_url}")
    pull_prompt_embeds(layout, sources, force)
    return [warning for warning in (pull_segmenter(layout), pull_pose_model(layout)) if warning]
