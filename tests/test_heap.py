"""ligo_fast.heap: freed heap pages handed back only when the resident set has outgrown what was kept."""

from __future__ import annotations

import pytest

from ligo_fast import heap


@pytest.fixture
def fake(monkeypatch):
    """resident() reads the list's next value; trim() calls are counted."""
    state = {"rss": [], "trims": 0}

    def trim() -> bool:
        state["trims"] += 1
        return True

    monkeypatch.setattr(heap, "resident", lambda: state["rss"].pop(0))
    monkeypatch.setattr(heap, "trim", trim)
    return state


def test_trims_only_beyond_the_kept_bytes_and_the_slack(fake):
    fake["rss"] = [1000, 1000 + 400 + 100, 1000 + 400 + 101, 1000 + 800 + 150]
    t = heap.Trimmer(slack=0.25)  # reads the start: 1000
    assert not t.kept(400) and fake["trims"] == 0  # 100 beyond the kept 400: within 0.25 x 400
    assert t.kept(400) and fake["trims"] == 1  # 101 beyond
    assert not t.kept(800) and fake["trims"] == 1  # the kept bytes grew with the resident set


def test_nothing_without_malloc_trim_or_proc(fake, monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    t = heap.Trimmer()
    assert t.start is None and not t.kept(0) and fake["trims"] == 0
    monkeypatch.undo()
    monkeypatch.setattr(heap, "resident", lambda: None)
    monkeypatch.setattr(heap, "trim", lambda: pytest.fail("trimmed without a resident set"))
    assert not heap.Trimmer().kept(0)


def test_the_real_calls_run_here():
    assert heap.resident() is None or heap.resident() > 0
    assert heap.trim() in (True, False)
