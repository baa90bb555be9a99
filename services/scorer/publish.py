"""One partition's outcomes in one transaction that commits only together with all its outputs.

Every output was encoded and validated before (``outputs.prepare``), so a transaction only sends bytes
the codec accepts. Within it, every send's delivery is awaited before the offsets are added and the
transaction committed, each step under a timeout (``send_timeout_s``, ``commit_timeout_s``):

* a record the broker refuses (larger than its topic accepts, invalid) aborts the transaction; the
  frame it belongs to is dead-lettered with the reason in the next one (a refused dead letter falls
  back to a truncated copy, then to a bare one; the dlq refusing even that ends the scorer);
* any other failure (a timeout, a lost broker) aborts and tries again, up to ``publish_attempts``;
* a producer that is fenced, whose abort fails or whose commit has an unknown result is replaced and
  the partition sought back to its committed offset (``PartitionTransactions.recover``).

Nothing is committed without its outputs, and no failure leaves the partition behind silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.scorer import metrics
from services.scorer.alerts import AlertDetector
from services.scorer.core import OutRecord, RecordOutcome, ScorerFailure, describe
from services.scorer.outputs import BARE, WHOLE, alert_outputs, dead_letter_outputs
from services.scorer.partitions import PartitionState, PartitionTransactions
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.scorer.publish")

_KINDS = {"verdicts": "verdict", "defects": "defect event", "dlq": "dead letter", "alerts": "alert"}


def refused_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the broker refuses this record, and would refuse it again."""
    from aiokafka import errors

    return (
        errors.MessageSizeTooLargeError,
        errors.RecordListTooLargeError,
        errors.CorruptRecordException,
        errors.InvalidTimestampError,
    )


@dataclass
class Attempt:
    """How one transaction ended."""

    committed: bool = False
    refused: list[tuple[int, OutRecord, BaseException]] = field(default_factory=list)  # outcome index
    error: BaseException | None = None
    usable: bool = True  # the producer can run another transaction
    fenced: bool = False


class PartitionPublisher:
    """Publishes each partition's outcomes (``publish``); owns the operator-alert detector, whose
    alerts ride in the transaction of the verdict that raised them."""

    def __init__(
        self,
        settings: Any,
        partitions: PartitionTransactions,
        detector: AlertDetector,
        count: Callable[[list[RecordOutcome], list[Any]], None] | None = None,
    ) -> None:
        self.cfg = settings.scorer
        self.topics = {name: settings.topic(name) for name in ("verdicts", "defects", "dlq", "alerts")}
        self.partitions = partitions
        self.detector = detector
        self._count = count or (lambda outcomes, alerts: None)
        self._refused = refused_errors()

    async def publish(self, state: PartitionState, outcomes: list[RecordOutcome]) -> bool:
        """Commit ``outcomes`` (consecutive fresh records of ``state``'s partition, in offset order)
        with the partition's offset. True when committed; False when the partition was recovered
        (sought back to its committed offset) or dropped instead. Raises ``ScorerFailure``."""
        failures = 0
        while True:
            outcomes = [self._as_refused(state, o) for o in outcomes]
            alerts = self._alerts(state, outcomes)
            attempt = await self._transaction(state, outcomes, alerts)
            if attempt.committed:
                state.committed_up_to(outcomes[-1].record.offset + 1)
                metrics.TRANSACTIONS.labels("committed").inc()
                self._count(outcomes, [a for o in outcomes for a, _ in alerts.get(o.record.offset, [])])
                return True
            if attempt.fenced:
                metrics.TRANSACTIONS.labels("fenced").inc()
                why = describe(attempt.error) if attempt.error is not None else "fenced"
                await self.partitions.recover(state, f"producer fenced: {why}", fenced=True)
                return False
            metrics.TRANSACTIONS.labels("aborted").inc()
            if attempt.refused:
                self._note_refused(state, outcomes, attempt.refused)
            else:
                failures += 1
                log_event(
                    log,
                    "transaction_aborted",
                    logging.WARNING,
                    partition=state.partition,
                    first_offset=outcomes[0].record.offset,
                    attempt=failures,
                    error=describe(attempt.error) if attempt.error is not None else "",
                )
            if not attempt.usable or failures >= self.cfg.publish_attempts:
                why = describe(attempt.error) if attempt.error else "outputs refused"
                await self.partitions.recover(state, f"after {failures} failed transactions: {why}")
                return False
            if failures:
                await asyncio.sleep(min(2.0, 0.2 * 2**failures))

    # -- one transaction ---------------------------------------------------------------------------
    async def _transaction(
        self,
        state: PartitionState,
        outcomes: list[RecordOutcome],
        alerts: dict[int, list[tuple[Any, OutRecord]]],
    ) -> Attempt:
        from aiokafka import TopicPartition
        from aiokafka.errors import ProducerFenced

        producer = state.producer
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(producer.begin_transaction(), self.cfg.send_timeout_s)
        except Exception as exc:  # a fenced or failed producer cannot begin: replace it
            return Attempt(error=exc, usable=False, fenced=isinstance(exc, ProducerFenced))
        sends: list[tuple[int, OutRecord, Any]] = []
        attempt = Attempt()
        deadline = loop.time() + self.cfg.send_timeout_s
        try:
            for i, outcome in enumerate(outcomes):
                raised = [out for _, out in alerts.get(outcome.record.offset, [])]
                for out in (*outcome.outputs, *raised):
                    try:
                        future = await asyncio.wait_for(
                            producer.send(
                                self.topics[out.topic], out.value, key=out.key, headers=list(out.headers)
                            ),
                            max(0.0, deadline - loop.time()),
                        )
                    except self._refused as exc:  # refused before it left (over max_request_size)
                        attempt.refused.append((i, out, exc))
                        continue
                    sends.append((i, out, future))
            # Every output delivered (or failed) before anything is committed.
            results = await asyncio.wait_for(
                asyncio.gather(*(future for _, _, future in sends), return_exceptions=True),
                max(0.0, deadline - loop.time()),
            )
        except TimeoutError as exc:
            metrics.TIMEOUTS.labels("send").inc()
            attempt.error = exc
            return await self._abort(state, attempt)
        except Exception as exc:
            attempt.error = exc
            if isinstance(exc, ProducerFenced):
                attempt.fenced, attempt.usable = True, False
                return attempt
            return await self._abort(state, attempt)
        for (i, out, _), result in zip(sends, results, strict=True):
            if isinstance(result, self._refused):
                attempt.refused.append((i, out, result))
            elif isinstance(result, ProducerFenced):
                attempt.fenced, attempt.usable, attempt.error = True, False, result
            elif isinstance(result, BaseException):
                attempt.error = result
        if attempt.fenced:
            return attempt
        if attempt.error is not None or attempt.refused:
            return await self._abort(state, attempt)
        tp = TopicPartition(state.topic, state.partition)
        deadline = loop.time() + self.cfg.commit_timeout_s
        try:
            offsets = {tp: outcomes[-1].record.offset + 1}
            await asyncio.wait_for(
                producer.send_offsets_to_transaction(offsets, self.cfg.group_id), self.cfg.commit_timeout_s
            )
        except ProducerFenced as exc:
            return Attempt(error=exc, usable=False, fenced=True)
        except Exception as exc:  # not committing yet: the transaction can still be aborted
            if isinstance(exc, TimeoutError):
                metrics.TIMEOUTS.labels("commit").inc()
            attempt.error = exc
            return await self._abort(state, attempt)
        try:
            await asyncio.wait_for(producer.commit_transaction(), max(0.0, deadline - loop.time()))
        except ProducerFenced as exc:
            return Attempt(error=exc, usable=False, fenced=True)
        except Exception as exc:  # committed or not, we cannot tell: a new producer will know
            if isinstance(exc, TimeoutError):
                metrics.TIMEOUTS.labels("commit").inc()
            return Attempt(error=exc, usable=False)
        return Attempt(committed=True)

    async def _abort(self, state: PartitionState, attempt: Attempt) -> Attempt:
        try:
            await asyncio.wait_for(state.producer.abort_transaction(), self.cfg.abort_timeout_s)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                metrics.TIMEOUTS.labels("abort").inc()
            log_event(log, "abort_failed", logging.ERROR, partition=state.partition, error=describe(exc))
            attempt.usable = False
            attempt.error = attempt.error or exc
        return attempt

    # -- refused outputs: the frame's dead letter instead ------------------------------------------
    def _note_refused(
        self,
        state: PartitionState,
        outcomes: list[RecordOutcome],
        refused: list[tuple[int, OutRecord, BaseException]],
    ) -> None:
        for i, out, exc in refused:
            outcome = outcomes[i]
            offset = outcome.record.offset
            metrics.OUTPUTS_REFUSED.labels(out.topic).inc()
            what = f"the {_KINDS[out.topic]} ({len(out.value)} bytes)"
            why = f"the {out.topic} topic refused {what}: {describe(exc)}"
            log_event(log, "output_refused", logging.ERROR, partition=state.partition, offset=offset, why=why)
            if out.topic == "alerts":  # an alert is not worth the frame: leave it out
                state.alerts[offset] = [(a, o) for a, o in state.alerts.get(offset, []) if o is not out]
            elif out.topic != "dlq":
                state.refused[offset] = (WHOLE, "output_rejected", why)
            else:
                letter = outcome.dead_letter
                assert letter is not None
                level = outcome.fallback
                if level >= BARE:
                    raise ScorerFailure(f"the dlq topic refuses even a bare dead letter: {why}")
                state.refused[offset] = (level + 1, letter.reason, f"{letter.detail}; then {why}"[:4000])

    @staticmethod
    def _as_refused(state: PartitionState, outcome: RecordOutcome) -> RecordOutcome:
        """The outcome as the dead letter its refusal calls for, if one of its outputs was refused."""
        refused = state.refused.get(outcome.record.offset)
        if refused is None:
            return outcome
        level, reason, detail = refused
        return dead_letter_outputs(outcome, reason, detail, level)

    # -- operator alerts: raised once per verdict, sent in its transaction -------------------------
    def _alerts(
        self, state: PartitionState, outcomes: list[RecordOutcome]
    ) -> dict[int, list[tuple[Any, OutRecord]]]:
        for outcome in outcomes:
            offset = outcome.record.offset
            if outcome.verdict is None or offset < state.alerts_seen:
                continue
            state.alerts_seen = offset + 1
            raised = self.detector.observe(outcome.verdict)
            if raised:
                headers = outcome.outputs[0].headers if outcome.outputs else ()
                state.alerts[offset] = alert_outputs(raised, headers)
        return {
            o.record.offset: state.alerts[o.record.offset]
            for o in outcomes
            if o.verdict is not None and o.record.offset in state.alerts
        }
