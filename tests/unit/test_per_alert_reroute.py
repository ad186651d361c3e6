"""Per-alert sink agent: a second first-hand copy of a routed alert is not sent again.

A router that crashed before committing routes its alerts again; both delivery records
land on the same partition of the delivery topic, so the agent that took the first one
skips the second (acked, counted). Parked, retried and redriven copies are sent on
purpose and never skipped; a revoked partition's memory is dropped.
"""

from __future__ import annotations

import json

from tests.unit.test_per_alert_revocation import Event, Gated, Harness, Message, settle


def _copy(h: Harness, original: Event, **changes: object) -> Event:
    offset = h.offsets.get(original.message.partition, 0)
    h.offsets[original.message.partition] = offset + 1
    value = json.loads(original.message.value)
    value.update(changes)
    message = Message(
        original.message.partition,
        offset,
        json.dumps(value).encode(),
        h.app.consumer_generation_id,
    )
    return Event(h.app, message, h.acked)


async def test_a_re_routed_copy_is_acked_without_a_second_request() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.start()
    first = h.event(0, "a0", "ia")
    h.stream.feed(first, _copy(h, first))
    await settle(lambda: len(h.acked) == 2)
    assert sink.started == ["a0"]
    await h.stop()


async def test_parked_retried_and_redriven_copies_are_sent() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.start()
    first = h.event(0, "a0", "ia")
    h.stream.feed(
        first,
        _copy(h, first, not_before=1.0),
        _copy(h, first, attempt=2),
        _copy(h, first, redrive=True),
    )
    await settle(lambda: len(h.acked) == 4)
    assert sink.started == ["a0"] * 4
    await h.stop()


async def test_a_revoked_partition_forgets_what_it_took() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.start()
    first = h.event(0, "a0", "ia")
    h.stream.feed(first)
    await settle(lambda: len(h.acked) == 1)
    h.revoke(0)
    h.stream.feed(_copy(h, first))  # read again by this worker after the rebalance
    await settle(lambda: len(sink.started) == 2)
    await h.stop()
