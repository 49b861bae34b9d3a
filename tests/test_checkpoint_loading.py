"""Strict checkpoint loading: one error listing every bad key; dtype on request; config styles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from synchuman.checkpoints.loading import CheckpointError, from_pretrained, read_config


class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.a = nn.Linear(width, 2)
        self.b = nn.Linear(2, 2)


def _write(folder: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors")
    return folder


def test_round_trip_and_dtype(tmp_path: Path) -> None:
    src = Tiny()
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    folder = _write(tmp_path / "m", state, {"name": "Tiny", "args": {"width": 3}})
    model = from_pretrained(folder, Tiny, dtype="bf16")
    assert model.a.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.a.weight.float(), src.a.weight.bfloat16().float())
    assert not model.training


def test_all_problems_in_one_error(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in Tiny().state_dict().items()}
    del state["b.bias"]
    state["a.weight"] = torch.zeros(2, 4)
    state["extra.weight"] = torch.zeros(1)
    folder = _write(tmp_path / "m", state, {"name": "Tiny", "args": {}})
    with pytest.raises(CheckpointError) as info:
        from_pretrained(folder, Tiny)
    text = str(info.value)
    assert "1 missing key(s): b.bias" in text
    assert "1 unexpected key(s): extra.weight" in text
    assert "a.weight: checkpoint (2, 4) vs model (2, 3)" in text


def test_config_styles(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "X", "_diffusers_version": "1", "k": 2}))
    assert read_config(tmp_path) == ("X", {"k": 2})
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="expected"):
        read_config(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config(tmp_path / "missing")
