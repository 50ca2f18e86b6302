"""The fixed-window record budget shared by the command router, the policy point and the envelope."""

from __future__ import annotations

from edge.budget import RecordBudget


def test_a_budget_allows_its_limit_per_window_and_counts_the_rest() -> None:
    now = [100.0]
    b = RecordBudget(2, 5.0, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, False, False]
    assert b.over == 2 and b.over_in_window == 2
    now[0] += 4.9  # still the same window
    assert not b.take() and b.over == 3
    now[0] += 0.1  # 5 s after the window began: a new one
    assert b.take() and b.take() and not b.take()
    assert b.over == 4 and b.over_in_window == 1


def test_reset_starts_a_new_window_at_once() -> None:
    b = RecordBudget(1, 60.0, clock=lambda: 0.0)
    assert b.take() and not b.take()
    b.reset()
    assert b.take() and b.over == 1
