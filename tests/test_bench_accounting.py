"""The benchmark's accounting: loss, duplication and reordering are detected when injected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.accounting import StreamSummary, StreamTracker, Totals, settle


def track(ns: list[int]) -> StreamSummary:
    tracker = StreamTracker()
    for n in ns:
        tracker.see(n)
    return tracker.summary()


def test_clean_stream() -> None:
    s = track(list(range(100)))
    assert (s.next, s.missing, s.delivered, s.duplicates, s.out_of_order) == (100, [], 100, 0, 0)


def test_injected_loss_duplication_and_reordering() -> None:
    s = track([0, 1, 3, 2, 2, 5, 6, 6])
    assert s.missing == [4]
    assert s.duplicates == 2  # the second 2 and the second 6
    assert s.out_of_order == 1  # 2 after 3
    totals = settle({(7, 0): 8}, {(1, 7, 0): s}, {0: [1]})
    assert totals == Totals(expected=8, delivered=8, lost=2, duplicated=2, out_of_order=1)  # 4 and 7 never came


def test_a_member_that_saw_nothing_lost_everything() -> None:
    totals = settle({(0, 0): 5}, {(1, 0, 0): track(list(range(5)))}, {0: [1, 2]})
    assert totals.lost == 5 and totals.expected == 10 and totals.delivered == 5


def test_messages_not_accepted_are_not_expected() -> None:
    # The server accepted 3 of the sender's messages, and the member saw those 3: nothing lost.
    assert settle({(0, 0): 3}, {(1, 0, 0): track([0, 1, 2])}, {0: [1]}).lost == 0


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=80))
def test_tracker_invariants(ns: list[int]) -> None:
    s = track(ns)
    distinct = set(ns)
    assert s.delivered == len(ns)
    assert s.duplicates == len(ns) - len(distinct)
    assert s.next - len(s.missing) == len(distinct)
    assert set(s.missing) == set(range(s.next)) - distinct


def test_count_only_members_catch_loss_and_duplication_in_aggregate() -> None:
    accepted = {(0, 0): 10, (1, 0): 5}
    seen = {(0, 0, 0): track(list(range(10))), (0, 1, 0): track(list(range(5)))}
    members = {0: [0, 7, 8]}
    totals = settle(accepted, seen, members, counted={7: 15, 8: 13})
    assert (totals.expected, totals.lost, totals.duplicated) == (45, 2, 0)
    assert settle(accepted, seen, members, counted={7: 16, 8: 15}).duplicated == 1


def test_unacked_broadcasts_are_neither_lost_nor_duplicated() -> None:
    # The server accepted 5 messages of the stream (acks arrived) and broadcast 3 more whose acks had not
    # arrived when the run ended; n=5 and 6 of those never reached the checked member.
    accepted = {(0, 0): 5}
    seen = {(1, 0, 0): track([0, 1, 2, 3, 4, 7])}
    totals = settle(accepted, seen, {0: [1]})
    assert (totals.lost, totals.duplicated, totals.unacked) == (0, 0, 1)
    # A gap inside the accepted range is still a loss.
    totals = settle(accepted, {(1, 0, 0): track([0, 1, 3, 4, 7])}, {0: [1]})
    assert (totals.lost, totals.duplicated, totals.unacked) == (1, 0, 1)


def test_count_only_deliveries_of_written_but_unacked_messages_are_not_duplicates() -> None:
    accepted = {(0, 0): 10}
    members = {0: [7]}
    written = {(0, 0): 13}
    totals = settle(accepted, {}, members, counted={7: 12}, written=written)
    assert (totals.expected, totals.lost, totals.duplicated, totals.unacked) == (10, 0, 0, 2)
    # Beyond what was written, an extra delivery can only be a duplicate.
    totals = settle(accepted, {}, members, counted={7: 15}, written=written)
    assert (totals.duplicated, totals.unacked) == (2, 3)
    # A stream with no ack at all still bounds what its members may receive.
    totals = settle({}, {}, members, counted={7: 4}, written={(0, 0): 4})
    assert (totals.expected, totals.lost, totals.duplicated, totals.unacked) == (0, 0, 0, 4)
