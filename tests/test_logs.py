"""The JSON log formatter keeps structured ``extra=`` fields as JSON (benches and log tools parse them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from synchuman.logs import JsonFormatter


def _format(**extra: object) -> dict:
    record = logging.LogRecord("synchuman.test", logging.INFO, __file__, 1, "stage 1 done", None, None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_dicts_and_lists_stay_json_structures() -> None:
    line = _format(timings={"encode": 0.2, "sample": 8.7}, voxels=3, phases=["a", "b"])
    assert line["msg"] == "stage 1 done"
    assert line["timings"] == {"encode": 0.2, "sample": 8.7}
    assert line["phases"] == ["a", "b"] and line["voxels"] == 3


def test_values_json_cannot_hold_become_text() -> None:
    line = _format(path=Path("/tmp/x"), scalar=np.float32(1.5), odd={(1, 2): "tuple key"})
    assert line["path"] == "/tmp/x"
    assert line["scalar"] == "1.5"
    assert line["odd"] == str({(1, 2): "tuple key"})
