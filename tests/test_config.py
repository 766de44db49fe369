"""gru_engine.config: one Settings object, overrides scoped to a thread, process-wide configure."""

from __future__ import annotations

import threading

import pytest

from gru_engine import api, config


def test_override_is_scoped_and_restored():
    base = config.get()
    with config.override(gru_path="gemm", row_block=2) as s:
        assert config.get() is s and s.gru_path == "gemm" and s.row_block == 2
        assert api.choose_gru_path(16, 64, 1, 1) == "gemm"
        with config.override(gru_path="rows"):
            assert config.get().gru_path == "rows" and config.get().row_block == 2
        assert config.get().gru_path == "gemm"
    assert config.get() is base and api.choose_gru_path(16, 64, 1, 1) == "packed"


def test_override_does_not_leak_into_other_threads():
    seen = []
    inside, done = threading.Event(), threading.Event()

    def reader():
        inside.wait(5)
        seen.append(config.get().gru_path)
        done.set()

    t = threading.Thread(target=reader)
    t.start()
    with config.override(gru_path="tiles"):
        inside.set()
        done.wait(5)
    t.join(5)
    assert seen == ["auto"]


def test_configure_is_process_wide():
    old = config.get()
    try:
        config.configure(packed_min_rows=4)
        out = []
        t = threading.Thread(target=lambda: out.append(config.get().packed_min_rows))
        t.start()
        t.join(5)
        assert out == [4] and api.choose_gru_path(2, 64, 1, 1) == "rows"
    finally:
        config.configure(packed_min_rows=old.packed_min_rows)
    assert config.get() == old


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="gru_path must be one of"):
        with config.override(gru_path="fast"):
            pass
    with pytest.raises(TypeError):
        config.configure(no_such_knob=1)
    assert config.get().gru_path == "auto"
