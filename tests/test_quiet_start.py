"""Loading the stage pipelines prints nothing a user cannot act on.

transformers once warned that ``CLIPImageProcessor`` wants torchvision and diffusers that ``accelerate`` is
missing, at every start of stage 1; both are fixed at their source (the PIL processor by name, accelerate
installed). Each load runs in a fresh interpreter: the libraries warn once per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: transformers' weight-loading progress bar: progress, not a warning.
PROGRESS_BAR = "Loading weights:"


@pytest.mark.parametrize("pipeline", ["stage1.Stage1Pipeline", "stage2.Stage2Pipeline"])
def test_loading_a_stage_prints_no_third_party_warning(tiny_ckpts: Path, pipeline: str) -> None:
    module, name = pipeline.split(".")
    code = (
        f"from synchuman.pipelines.{module} import {name}\n"
        f"{name}.from_pretrained({str(tiny_ckpts)!r}, 'cpu', 'float32')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    noise = [line for line in lines if not line.lstrip("\r").startswith(PROGRESS_BAR)]
    assert not noise, "\n".join(noise)
