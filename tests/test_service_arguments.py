"""Every service main reports a bad flag the same way: usage, ``<prog>: error: <message>``, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.launcher import TARGETS
from synchuman_cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]

#: target -> (arguments, what the error line must say)
BAD_FLAGS = {
    "preprocess": (["--max-pixels", "many"], "argument --max-pixels: invalid int value: 'many'"),
    "stage1": (["--cuda-graphs", "on"], "--cuda-graphs on replays the compiled model; add --compile"),
    "stage2": (
        ["--gaussian-views", "x"],
        "argument --gaussian-views: must be 'auto' or a number >= 0, got 'x'",
    ),
    "gateway": (["--workers", "eight"], "argument --workers: invalid int value: 'eight'"),
}


def test_every_target_has_a_bad_flag_case() -> None:
    assert set(BAD_FLAGS) == set(TARGETS)


@pytest.mark.parametrize("target", sorted(BAD_FLAGS))
def test_a_bad_flag_is_a_usage_error(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    arguments, message = BAD_FLAGS[target]
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", target, *arguments])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"usage: synchuman serve {target} "), stderr
    assert stderr.rstrip().endswith(f"synchuman serve {target}: error: {message}"), stderr


@pytest.mark.parametrize("target", sorted(BAD_FLAGS))
def test_an_unknown_flag_is_a_usage_error(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", target, "--no-such-flag"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert f"synchuman serve {target}: error: unrecognized arguments: --no-such-flag" in stderr, stderr


def test_python_m_gateway_reports_the_same_way() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--workers", "eight"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    expected = "python -m gateway: error: argument --workers: invalid int value: 'eight'"
    assert done.stderr.rstrip().endswith(expected), done.stderr
