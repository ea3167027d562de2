"""The embedded store's compact attempts table: one float per callee called once, a sorted list beyond, and
window counts that match a plain sorted list of times whatever the order they arrive in."""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter.stores.embedded_records import Attempts, add_time, count_after

A, B, N1, N2 = "acme", "other", "+33612345678", "+33698765432"


def test_one_attempt_is_one_float_and_more_become_a_sorted_list() -> None:
    t = Attempts()
    t.add(A, N1, 100.0)
    assert t.of(A)[N1] == 100.0 and not isinstance(t.of(A)[N1], list)
    t.add(A, N1, 50.0)  # the clock went back
    t.add(A, N1, 200.0)
    assert t[(A, N1)] == [50.0, 100.0, 200.0]
    assert (A, N1) in t and (B, N1) not in t and (A, N2) not in t and "x" not in t
    t.add(B, N1, 1.0)
    assert sorted(t) == [(A, N1), (B, N1)] and len(t) == 2


def test_prune_drops_old_times_and_folds_a_lone_survivor_back_to_a_float() -> None:
    t = Attempts()
    for at in (10.0, 20.0, 30.0):
        t.add(A, N1, at)
    t.add(A, N2, 5.0)
    assert t.prune([(A, N1), (A, N2), (B, N1)], 25.0) == 3
    assert t.of(A) == {N1: 30.0}
    assert t.prune(list(t), 31.0) == 1
    assert len(t) == 0


def test_an_incomplete_copy_remembers_numbers_read_without_attempts() -> None:
    t = Attempts()
    t.set(A, N1, [])
    assert (A, N1) in t and t[(A, N1)] == [] and count_after(t.of(A)[N1], 0.0) == 0
    add_time(t.of(A), N1, 7.0)
    assert t[(A, N1)] == [7.0]


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0, 1000, allow_nan=False), max_size=12), since=st.floats(-1, 1001))
def test_counts_match_a_sorted_list(times: list[float], since: float) -> None:
    table: dict[str, float | list[float]] = {}
    for at in times:
        add_time(table, N1, at)
    ordered = sorted(times)
    if times:
        assert _wrap(table)[(A, N1)] == ordered
        assert count_after(table[N1], since) == len(ordered) - bisect_right(ordered, since)


def _wrap(table: dict[str, float | list[float]]) -> Attempts:
    t = Attempts()
    t._by_account[A] = table
    return t
