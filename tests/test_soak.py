"""CI runs the soak (bench/soak.py) with a few jobs: the embedded system on tiny checkpoints with a cancel,
deletes and a stage-2 restart loses no job and leaves no file of a deleted job behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_a_small_soak_loses_no_job_and_leaves_nothing_behind(tmp_path):
    import soak

    result = soak.main(
        ["--jobs", "4", "--in-flight", "2", "--cancel-fraction", "0.25", "--delete-fraction", "1.0"]
        + ["--seed", "1", "--max-minutes", "15", "--work-dir", str(tmp_path)]
    )
    assert result.problems == []
    assert sum(result.states.values()) == 4 and not result.lost
    assert result.deleted == 4 and result.left_behind == []
    assert result.restarted.startswith("stage2")
