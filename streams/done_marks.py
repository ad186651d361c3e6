"""Which records past a committed position are done already, kept with the commit.

A delivery lane's deliveries end out of order (one integration answers in 20 ms,
another retries), and its group can only be committed up to the oldest one not done.
Whoever reads the partition next (after a rebalance, a restart) starts there and would
deliver everything done after it again: about a thousand repeats per rebalance at
3 000 deliveries/s (bench/analysis.md). So each commit also says, in the offset
commit's metadata (Kafka keeps it with the offset), how far the lane had read and which
offsets in between were still open; the next reader skips the others.

Format (`v1 <read> <open>`): `read` = the offset after the last one read, minus the
position; `open` = comma-separated runs of offsets not done, relative to the position
(`a` or `a+n` for n more after a), `-` for none. Too long for the broker's metadata
limit (`offset.metadata.max.bytes`, 4 096 by default): no marks, everything is read
again (the behaviour without them).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_MARKS", "DoneMarks", "decode", "encode"]

MAX_MARKS = 3000  # characters, under the broker's default 4 096
_VERSION = "v1"


def encode(position: int, read_to: int, open_offsets: Iterable[int]) -> str:
    """Marks for a commit at `position` (the first open offset, or `read_to` if none)."""
    runs: list[str] = []
    start = last = -1
    for offset in open_offsets:
        if offset == last + 1 and start >= 0:
            last = offset
            continue
        if start >= 0:
            runs.append(_run(start - position, last - start))
        start = last = offset
    if start >= 0:
        runs.append(_run(start - position, last - start))
    text = f"{_VERSION} {read_to - position} {','.join(runs) or '-'}"
    return text if len(text) <= MAX_MARKS else ""


def _run(first: int, more: int) -> str:
    return f"{first}+{more}" if more else str(first)


@dataclass(frozen=True)
class DoneMarks:
    """Offsets from a commit's `position` up to `read_to` are done unless open."""

    position: int
    read_to: int
    starts: tuple[int, ...]  # open runs, absolute offsets, ascending
    ends: tuple[int, ...]  # inclusive

    def done(self, offset: int) -> bool:
        if offset >= self.read_to:
            return False
        i = bisect.bisect_right(self.starts, offset) - 1
        return i < 0 or offset > self.ends[i]

    @property
    def skipped(self) -> int:
        """How many offsets past the position are done (to log)."""
        still_open = sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))
        return self.read_to - self.position - still_open


def decode(position: int, text: str | None) -> DoneMarks | None:
    """The marks of a commit at `position`, or None (none, or not ours to read)."""
    if not text:
        return None
    try:
        version, read, runs = text.split(" ")
        if version != _VERSION:
            return None
        starts: list[int] = []
        ends: list[int] = []
        for run in runs.split(",") if runs != "-" else []:
            first, _, more = run.partition("+")
            start = position + int(first)
            end = start + (int(more) if more else 0)
            if start < position or end < start or (ends and start <= ends[-1]):
                return None
            starts.append(start)
            ends.append(end)
        read_to = position + int(read)
    except ValueError:
        return None
    if read_to < position or (ends and ends[-1] >= read_to):
        return None
    return DoneMarks(position, read_to, tuple(starts), tuple(ends))
