"""The stage-1 service says at start-up whether its torch.compile cache is warm (a cold one compiles for
minutes), reading the directory torch itself uses."""

from __future__ import annotations

import logging

from services.stage1.compile_cache import cache_state, log_cache_state


def test_an_empty_cache_directory_is_cold_and_the_log_says_the_start_compiles(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    state = cache_state()
    assert state.directory == tmp_path / "inductor" and state.files == 0 and not state.warm
    with caplog.at_level(logging.INFO):
        log_cache_state(state)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "first start compiles" in caplog.records[0].getMessage()


def test_a_cache_directory_with_entries_is_warm(tmp_path, monkeypatch, caplog):
    entry = tmp_path / "fxgraph" / "ab" / "entry"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"compiled")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    state = cache_state()
    assert state.files == 1 and state.warm
    with caplog.at_level(logging.INFO):
        log_cache_state(state)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "reuses" in caplog.records[0].getMessage()
