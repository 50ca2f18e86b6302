"""The one restart policy: doubling, capped, reset after a stable run, refused when nonsensical."""

from __future__ import annotations

import pytest

from edge.backoff import Backoff


def test_doubles_up_to_the_cap() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_stable_run_starts_over() -> None:
    b = Backoff(0.5, 30.0, stable_after_s=10.0)
    assert [b.next(ran_s=1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert b.peek() == 4.0
    assert b.next(ran_s=10.0) == 0.5  # ran long enough: the failure counts as the first again
    b.reset()
    assert b.next() == 0.5


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_nonsense_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial, cap)
