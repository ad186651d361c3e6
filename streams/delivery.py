"""Runs sinks under the retry policy and ends every delivery as delivered or dead-lettered.

Nothing here knows faust: the agents hand in a `Reporter` that writes status and DLQ
records, so this logic is unit-tested without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, TypedDict, runtime_checkable

from pydantic import BaseModel, ValidationError

from schemas.codec import format_errors
from schemas.models import (
    Alert,
    DeadLetter,
    Delivery,
    DeliveryStatus,
    IntegrationConfig,
    Outcome,
)
from sinks.base import Batch, BatchingSink, BatchRecord, PerAlertSink, Sink
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox, SecretBoxError
from streams import metrics
from streams.breaker import Breakers

__all__ = [
    "BatchReporter",
    "BatchRunner",
    "BatchStatuses",
    "DeliveryRunner",
    "Flight",
    "Park",
    "Reporter",
    "StatusValues",
    "batch_status_values",
    "dead_letter_for",
    "dead_letter_for_record",
]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where attempt outcomes go (the status topic and the DLQ in production)."""

    async def status(self, record: DeliveryStatus) -> None: ...

    async def dead_letter(self, record: DeadLetter) -> None: ...


@runtime_checkable
class BatchReporter(Reporter, Protocol):
    """A Reporter that also takes a batch's status records as plain values (the Kafka
    one); `BatchRunner` gives any other Reporter a `DeliveryStatus` per alert."""

    async def batch_statuses(self, records: Iterable[StatusValues]) -> None: ...


def _dead_letter(
    integration: IntegrationConfig,
    where: tuple[str, int, int],
    alert_id: str,
    idempotency_key: str,
    alert: Alert,
    reason: str,
    attempts: int,
) -> DeadLetter:
    """A DLQ record that names the alert and integration but carries no settings."""
    topic, partition, offset = where
    return DeadLetter(
        reason=reason,
        stage="deliver",
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        at=time.time(),
        tenant_id=integration.tenant_id,
        integration_id=integration.integration_id,
        integration_type=integration.type,
        alert_id=alert_id,
        idempotency_key=idempotency_key,
        attempts=attempts,
        alert=alert,
    )


def dead_letter_for(delivery: Delivery, reason: str, attempts: int) -> DeadLetter:
    where = (delivery.source_topic, delivery.source_partition, delivery.source_offset)
    alert = delivery.alert
    return _dead_letter(
        delivery.integration,
        where,
        alert.alert_id,
        delivery.idempotency_key,
        alert,
        reason,
        attempts,
    )


def dead_letter_for_record(
    batch: Batch, record: BatchRecord, reason: str, attempts: int
) -> DeadLetter:
    """`dead_letter_for` of one alert of a batch, from its slim form."""
    where = (batch.topic, batch.partition, record.source_offset)
    return _dead_letter(
        batch.integration,
        where,
        record.alert_id,
        record.idempotency_key,
        record.alert(),
        reason,
        attempts,
    )


class StatusValues(TypedDict):
    """A status record as plain values, in `DeliveryStatus` field order (its JSON is the
    model's JSON): what batch records are reported as, without a model per alert."""

    alert_id: str
    tenant_id: str
    integration_id: str
    integration_type: str
    idempotency_key: str
    attempt: int
    outcome: str
    http_status: int | None
    latency_ms: float
    error: str | None
    at: float
    next_attempt_at: float | None
    circuit: str | None


def _status_values(
    integration: IntegrationConfig,
    alert_id: str,
    idempotency_key: str,
    attempt: int,
    outcome: Outcome,
    latency: float,
    http_status: int | None,
    error: str | None,
    at: float,
) -> StatusValues:
    return {
        "alert_id": alert_id,
        "tenant_id": integration.tenant_id,
        "integration_id": integration.integration_id,
        "integration_type": integration.type,
        "idempotency_key": idempotency_key,
        "attempt": attempt,
        "outcome": outcome.value,
        "http_status": http_status,
        "latency_ms": round(latency * 1000, 3),
        "error": error,
        "at": at,
        "next_attempt_at": None,
        "circuit": None,
    }


def _record_status(
    integration: IntegrationConfig,
    record: BatchRecord | Delivery,
    attempt: int,
    outcome: Outcome,
    latency: float,
    http_status: int | None = None,
    error: str | None = None,
) -> DeliveryStatus:
    """One status record of one alert (of a batch, or of a per-alert delivery)."""
    alert_id = record.alert.alert_id if isinstance(record, Delivery) else record.alert_id
    values = _status_values(
        integration,
        alert_id,
        record.idempotency_key,
        attempt,
        outcome,
        latency,
        http_status,
        error,
        time.time(),
    )
    return DeliveryStatus.model_validate(values)


@dataclass(frozen=True, slots=True)
class BatchStatuses:
    """The status records of one attempt at a whole batch, one per alert: `base` with
    each record's alert id and idempotency key (nothing else differs between them).

    Iterating gives each as plain values (~0.2 µs each instead of a validated
    `DeliveryStatus`, ~2.6 µs, and its `model_dump`, ~1.9 µs); the Kafka reporter writes
    their JSON from `base`'s once (streams/reporter.py)."""

    base: StatusValues
    records: Sequence[BatchRecord]

    def __iter__(self) -> Iterator[StatusValues]:
        base = self.base
        for record in self.records:
            # Keys already in `base` keep their place: the field order stays the schema's.
            yield {**base, "alert_id": record.alert_id, "idempotency_key": record.idempotency_key}


def batch_status_values(
    batch: Batch,
    attempt: int,
    outcome: Outcome,
    latency: float,
    http_status: int | None,
    error: str | None,
    at: float,
) -> BatchStatuses:
    """The status records of one attempt at a whole batch."""
    base = _status_values(
        batch.integration, "", "", attempt, outcome, latency, http_status, error, at
    )
    return BatchStatuses(base, batch.records)


def _status(
    delivery: Delivery,
    attempt: int,
    outcome: Outcome,
    latency: float,
    http_status: int | None = None,
    error: str | None = None,
) -> DeliveryStatus:
    return _record_status(
        delivery.integration, delivery, attempt, outcome, latency, http_status, error
    )


def _as_delivery_error(exc: Exception, redact: Redactor) -> DeliveryError:
    """Anything a sink raises becomes a classified, redacted error.

    An unexpected exception is a bug or an unforeseen answer: retrying is the safe
    choice (the alert ends in the DLQ if it keeps happening), never dropping it.
    """
    if isinstance(exc, DeliveryError):
        exc.message = redact(exc.message)
        return exc
    return RetryableError(redact(f"unexpected {type(exc).__name__}: {exc}"))


class Flight:
    """Whether one delivery may be called off right now (its partition was revoked).

    `waiting` is True only while the delivery waits for its turn at the per-integration
    limit or for an in-place retry, and before its task first runs: cancelling its task
    then sends nothing and reports nothing (a task cancelled before it starts runs none
    of its code). From the moment it has its turn until its attempt is reported it is
    busy: a request on the wire is left to finish, as cancelling it would only leave its
    outcome unknown (a duplicate either way).
    """

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = True


async def _turn(gate: asyncio.Semaphore, flight: Flight) -> None:
    """Acquire `gate`; the caller releases it. The wait is the cancellable part."""
    flight.waiting = True
    try:
        await gate.acquire()
    finally:
        flight.waiting = False


@dataclass
class _Prepared:
    settings: BaseModel
    redact: Redactor
    source: Mapping[str, Any]  # the stored (sealed) settings these were prepared from


class _SettingsCache:
    """Opened and parsed settings per (integration, config version): not per alert.

    An entry serves only the very settings it was prepared from (the same object, as
    records read with a shared config snapshot carry, or equal ones): a record claiming
    a version whose settings it does not hold, e.g. one produced by hand to a delivery
    topic, is never delivered with another record's settings, nor they with its.
    """

    def __init__(self, sink: Sink[Any], box: SecretBox) -> None:
        self._sink = sink
        self._box = box
        self._cache: dict[tuple[str, int], _Prepared] = {}

    def get(self, delivery: Delivery) -> _Prepared:
        """Raises ValidationError or SecretBoxError when the settings are unusable."""
        return self.prepare(delivery.integration, delivery.config_version)

    def prepare(self, integration: IntegrationConfig, config_version: int) -> _Prepared:
        """The same for a config snapshot and its version (a batch holds one)."""
        key = (integration.key, config_version)
        source = integration.settings
        prepared = self._cache.get(key)
        if prepared is not None and (prepared.source is source or prepared.source == source):
            return prepared
        opened = self._box.open_settings(source, integration.key)
        settings = self._sink.parse_settings(opened)
        prepared = _Prepared(settings, self._sink.redactor(settings), source)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = prepared
        return prepared


async def _with_retry(
    policy: RetryPolicy,
    attempt_fn: Callable[[int], Awaitable[int | None]],
    on_attempt: Callable[[int, float, int | None, DeliveryError | None, bool], Awaitable[None]],
    redact: Redactor,
    flight: Flight | None = None,
) -> tuple[DeliveryError | None, int]:
    """Attempt until success or the policy gives up: (final error or None, attempts made)."""
    attempt = 0
    while True:
        attempt += 1
        started = time.monotonic()
        try:
            status = await attempt_fn(attempt)
        except Exception as exc:  # a sink must never lose an alert
            error = _as_delivery_error(exc, redact)
            delay = policy.delay(attempt, error)
            await on_attempt(
                attempt, time.monotonic() - started, error.status, error, delay is None
            )
            if delay is None:
                return error, attempt
            if flight is None:
                await asyncio.sleep(delay)
                continue
            flight.waiting = True
            try:
                await asyncio.sleep(delay)
            finally:
                flight.waiting = False
        else:
            await on_attempt(attempt, time.monotonic() - started, status, None, True)
            return None, attempt


class _Meters:
    """One integration type's metric series, each looked up once.

    `.labels()` hashes the label values under a lock on every call; per delivery that was
    four lookups. Series are still created on first use, so /metrics shows the same
    series as before.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._attempts: dict[Outcome, Any] = {}

    def attempt(self, outcome: Outcome, seconds: float) -> None:
        """`metrics.record_attempt` for one attempt."""
        counter = self._attempts.get(outcome)
        if counter is None:
            counter = self._attempts[outcome] = metrics.DELIVERIES.labels(self.kind, outcome.value)
        counter.inc()
        self.latency.observe(seconds)

    @cached_property
    def latency(self) -> Any:
        return metrics.DELIVERY_LATENCY.labels(self.kind)

    @cached_property
    def end_to_end(self) -> Any:
        return metrics.END_TO_END.labels(self.kind)

    @cached_property
    def circuits(self) -> Any:
        return metrics.CIRCUITS_OPEN.labels(self.kind)

    @cached_property
    def dead_letters(self) -> Any:
        return metrics.DLQ.labels(self.kind, "deliver")


Park = Callable[[Delivery, float], Awaitable[None]]


class DeliveryRunner:
    """Delivers alerts through a per-alert sink, with concurrency bounded per integration.

    With `park` (the worker), each call makes one attempt: a retryable failure parks the
    delivery on a delay topic and the partition moves on, so a failing destination never
    holds up the alerts behind it. Without it (tests, tools), retries wait in place.
    """

    def __init__(
        self,
        sink: PerAlertSink[Any],
        policy: RetryPolicy,
        reporter: Reporter,
        box: SecretBox,
        per_integration_concurrency: int = 4,
        park: Park | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.sink = sink
        self.policy = policy
        self.reporter = reporter
        self.park = park
        self.breakers = breakers or Breakers()
        self._limit = per_integration_concurrency
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._settings = _SettingsCache(sink, box)
        self._meters: dict[str, _Meters] = {}

    def _meters_for(self, kind: str) -> _Meters:
        meters = self._meters.get(kind)
        if meters is None:
            if len(self._meters) >= 64:  # kinds come from the records: bound them
                self._meters.clear()
            meters = self._meters[kind] = _Meters(kind)
        return meters

    def _gate(self, integration_key: str) -> asyncio.Semaphore:
        gate = self._gates.get(integration_key)
        if gate is None:
            gate = self._gates[integration_key] = asyncio.Semaphore(self._limit)
        return gate

    async def deliver_many(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.deliver(d) for d in deliveries)))

    async def deliver(self, delivery: Delivery, flight: Flight | None = None) -> Outcome:
        """Deliver (or park, or dead-letter) one alert. With `flight`, the caller may cancel
        the call while `flight.waiting`: nothing was sent or reported for that attempt."""
        flight = flight if flight is not None else Flight()
        flight.waiting = False
        kind = delivery.integration.type
        try:
            prepared = self._settings.get(delivery)
        except ValidationError as exc:
            reason = f"invalid {kind} settings: {format_errors(exc)}"
            await self._dead(delivery, reason, 0)
            return Outcome.DEAD_LETTERED
        except SecretBoxError as exc:
            reason = f"cannot open the {kind} settings' secrets: {exc}"
            await self._dead(delivery, reason, 0)
            return Outcome.DEAD_LETTERED
        sink, settings = self.sink, prepared.settings
        if self.park is not None:
            return await self._attempt_once(delivery, prepared, self.park, flight)

        gate = self._gate(delivery.integration.key)

        async def attempt(_n: int) -> int | None:
            await _turn(gate, flight)
            try:
                return await sink.send(delivery, settings)
            finally:
                gate.release()

        async def on_attempt(
            n: int, latency: float, status: int | None, err: DeliveryError | None, final: bool
        ) -> None:
            outcome = (
                Outcome.DELIVERED
                if err is None
                else (Outcome.DEAD_LETTERED if final else Outcome.RETRYING)
            )
            meters = self._meters_for(kind)
            meters.attempt(outcome, latency)
            if err is None and delivery.produced_at:
                meters.end_to_end.observe(max(0.0, time.time() - delivery.produced_at))
            await self.reporter.status(
                _status(delivery, n, outcome, latency, status, err.message if err else None)
            )

        error, attempts = await _with_retry(
            self.policy, attempt, on_attempt, prepared.redact, flight
        )
        if error is None:
            return Outcome.DELIVERED
        await self._dead(delivery, error.message, attempts)
        return Outcome.DEAD_LETTERED

    async def _attempt_once(
        self, delivery: Delivery, prepared: _Prepared, park: Park, flight: Flight
    ) -> Outcome:
        kind, key = delivery.integration.type, delivery.integration.key
        attempt = delivery.attempt + 1
        started = time.monotonic()
        error: DeliveryError | None = None
        status: int | None = None
        gate = self._gate(key)
        circuit = self.breakers.get(key)
        await _turn(gate, flight)
        try:
            # The breaker is asked only once this delivery has its turn: a probe admitted
            # and then cancelled while waiting would leave the circuit half open for good.
            was = circuit.state  # each change is read with its before, no await between
            wait = self.breakers.admit(key)
            if wait is not None:
                # Open circuit: no call to the destination; it still counts as an attempt
                # so that an alert for a destination that never recovers ends in the DLQ.
                error = RetryableError(
                    f"circuit open after repeated failures (retry in {wait:.0f} s)"
                )
                error.retry_after = wait
                state = circuit.state
            else:
                try:
                    status = await self.sink.send(delivery, prepared.settings)
                except Exception as exc:  # a sink must never lose an alert
                    error = _as_delivery_error(exc, prepared.redact)
                    status = error.status
                    was = circuit.state
                    state = self.breakers.failure(key, error.retryable)
                else:
                    was = circuit.state
                    state = self.breakers.success(key)
        finally:
            gate.release()
        latency = time.monotonic() - started
        meters = self._meters_for(kind)
        gauge = meters.circuits  # created on the first attempt, as before
        if (was == "closed") != (state == "closed"):
            # Counting every circuit costs O(integrations): only when this one opened or
            # closed (open <-> half open changes no count).
            gauge.set(self.breakers.open_count())
        if error is None:
            meters.attempt(Outcome.DELIVERED, latency)
            if delivery.produced_at:
                meters.end_to_end.observe(max(0.0, time.time() - delivery.produced_at))
            record = _status(delivery, attempt, Outcome.DELIVERED, latency, status)
            record.circuit = state  # a fresh record: set, not copied (~2 us per delivery)
            await self.reporter.status(record)
            return Outcome.DELIVERED
        delay = self.policy.delay(attempt, error)
        if delay is not None and wait is not None:
            delay = max(delay, wait)
        outcome = Outcome.DEAD_LETTERED if delay is None else Outcome.RETRYING
        meters.attempt(outcome, latency)
        record = _status(delivery, attempt, outcome, latency, status, error.message)
        next_at = None if delay is None else time.time() + delay
        record.circuit, record.next_attempt_at = state, next_at
        await self.reporter.status(record)
        if delay is None:
            await self._dead(delivery, error.message, attempt)
            return Outcome.DEAD_LETTERED
        await park(delivery.model_copy(update={"attempt": attempt, "not_before": next_at}), delay)
        return Outcome.RETRYING

    async def _dead(self, delivery: Delivery, reason: str, attempts: int) -> None:
        self._meters_for(delivery.integration.type).dead_letters.inc()
        log.warning(
            "dead-lettered alert %s for %s: %s",
            delivery.alert.alert_id,
            delivery.integration.key,
            reason,
        )
        await self.reporter.dead_letter(dead_letter_for(delivery, reason, attempts))


class BatchRunner:
    """Writes one batch through a batching sink under the retry policy."""

    def __init__(
        self, sink: BatchingSink[Any], policy: RetryPolicy, reporter: Reporter, box: SecretBox
    ) -> None:
        self.sink = sink
        self.policy = policy
        self.reporter = reporter
        self._settings = _SettingsCache(sink, box)

    async def write(self, batch: Batch) -> Outcome:
        integration = batch.integration  # the newest config snapshot of its records
        kind = integration.type
        attempts = 0
        try:
            prepared = self._settings.prepare(integration, batch.config_version)
        except (ValidationError, SecretBoxError) as exc:
            detail = format_errors(exc) if isinstance(exc, ValidationError) else str(exc)
            error: DeliveryError | None = PermanentError(f"unusable {kind} settings: {detail}")
        else:
            sink, settings = self.sink, prepared.settings

            async def attempt(_n: int) -> int | None:
                return await sink.write(batch, settings)

            async def on_attempt(
                n: int, latency: float, status: int | None, err: DeliveryError | None, final: bool
            ) -> None:
                outcome = (
                    Outcome.DELIVERED
                    if err is None
                    else (Outcome.DEAD_LETTERED if final else Outcome.RETRYING)
                )
                metrics.record_attempt(kind, outcome.value, latency, count=len(batch.records))
                now = time.time()
                if err is None:
                    metrics.observe_many(
                        metrics.END_TO_END.labels(kind),
                        (max(0.0, now - r.produced_at) for r in batch.records if r.produced_at),
                    )
                message = err.message if err else None
                values = batch_status_values(batch, n, outcome, latency, status, message, now)
                if isinstance(self.reporter, BatchReporter):
                    await self.reporter.batch_statuses(values)
                else:
                    for one in values:
                        await self.reporter.status(DeliveryStatus.model_validate(one))

            error, attempts = await _with_retry(self.policy, attempt, on_attempt, prepared.redact)
        if error is None:
            return Outcome.DELIVERED
        for record in batch.records:
            metrics.DLQ.labels(kind, "deliver").inc()
            await self.reporter.dead_letter(
                dead_letter_for_record(batch, record, error.message, attempts)
            )
        log.warning(
            "dead-lettered a batch of %d for %s: %s",
            len(batch.records),
            batch.integration.key,
            error.message,
        )
        return Outcome.DEAD_LETTERED
