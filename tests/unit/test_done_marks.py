"""The marks a delivery lane commits about the records past its position that are done
(streams/done_marks.py). That the next reader skips them: test_per_alert_deliveries.py."""

from __future__ import annotations

import random

import pytest

from streams.done_marks import MAX_MARKS, decode, encode


@pytest.mark.parametrize(
    ("position", "read_to", "open_offsets"),
    [
        (10, 10, []),  # nothing past the position
        (10, 20, [10]),
        (10, 20, [10, 11, 12, 15, 19]),
        (0, 5000, [0, *range(7, 900), 4999]),
    ],
)
def test_marks_say_exactly_which_offsets_past_the_position_are_done(
    position: int, read_to: int, open_offsets: list[int]
) -> None:
    mark = decode(position, encode(position, read_to, open_offsets))
    assert mark is not None
    for offset in range(position, read_to + 3):
        expected = offset < read_to and offset not in open_offsets
        assert mark.done(offset) is expected, offset
    assert mark.skipped == read_to - position - len(open_offsets)


def test_marks_too_long_for_the_broker_are_left_out() -> None:
    scattered = list(range(0, 20_000, 2))  # every other offset open: no runs
    assert encode(0, 20_000, scattered) == ""
    assert decode(0, "") is None


@pytest.mark.parametrize(
    "text", ["v2 10 -", "v1 x -", "v1 10 5,3", "v1 10 12", "v1 -1 -", "hello", "v1 10 -2"]
)
def test_marks_that_do_not_add_up_are_ignored(text: str) -> None:
    """Someone else's metadata, or ours damaged: read everything again."""
    assert decode(100, text) is None


def test_random_sets_round_trip_within_the_limit() -> None:
    rng = random.Random(5)
    for _ in range(200):
        position = rng.randrange(0, 10**9)
        read_to = position + rng.randrange(0, 3000)
        open_offsets = sorted(
            {position, *(rng.randrange(position, read_to + 1) for _ in range(20))}
        )
        open_offsets = [o for o in open_offsets if o < read_to]
        text = encode(position, read_to, open_offsets)
        assert len(text) <= MAX_MARKS
        mark = decode(position, text)
        assert mark is not None
        assert [o for o in range(position, read_to) if not mark.done(o)] == open_offsets
