"""Announcing a model, and the history of every announcement.

The ``models`` topic is compacted to its last record: enough for scorers, which serve the newest
announcement, but not for a person asking what served when, nor for a rollback. So every announcement
is written twice in one Kafka transaction: on ``models`` (what scorers follow) and, with the command,
the account that ran it and why, on ``model-history`` (never compacted or expired). A read_committed
reader of the history sees an announcement exactly when scorers can, and never one they cannot.
"""

from __future__ import annotations

import getpass
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

from shared.errors import MessageError, ModelRefused
from shared.kafka.client import make_producer
from shared.kafka.reading import read_topic
from shared.kafka.topics import MODEL_ANNOUNCEMENT_KEY
from shared.limits import ID_MAX, TEXT_MAX
from shared.messages.codec import decode, encode
from shared.messages.schemas import ModelAnnouncement, ModelHistoryEntry
from shared.telemetry.logging import log_event, record_position

log = logging.getLogger("lineguard.scorer.history")


def current_actor() -> str:
    """The account running the command, for the history (an account without a name: its uid)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a bare container)
        name = ""
    name = "".join(c for c in name if c.isprintable()).strip()[:ID_MAX]
    return name or f"uid-{os.getuid()}"


def history_entry(
    announcement: ModelAnnouncement,
    *,
    action: str = "announce",
    reason: str = "",
    report_sha256: str = "",
    previous_version: str = "",
    actor: str | None = None,
) -> ModelHistoryEntry:
    return ModelHistoryEntry(
        announcement=announcement,
        action=action,
        actor=actor or current_actor(),
        reason=reason[:TEXT_MAX],  # a --reason or a report's figures: the wire's limit
        report_sha256=report_sha256,
        previous_version=previous_version,
    )


async def publish_announcement(
    settings: Any, announcement: ModelAnnouncement, entry: ModelHistoryEntry | None = None
) -> ModelHistoryEntry:
    """Put ``announcement`` on the compacted ``models`` topic (under its single key) and its history
    entry (``entry``, or a plain ``announce`` one) on ``model-history``, in one transaction."""
    entry = entry or history_entry(announcement)
    if entry.announcement != announcement:
        raise ValueError("the history entry is about another announcement")
    models, history = encode(announcement), encode(entry)  # validated before anything is sent
    # One-shot producer: a fresh id each time (operators may announce from several machines at once;
    # there is no earlier instance to fence). ACLs grant the prefix.
    transactional_id = f"{settings.promotion.transactional_id_prefix}-{uuid.uuid4().hex[:16]}"
    producer = make_producer(settings, transactional_id=transactional_id)
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(settings.topic("models"), models, key=MODEL_ANNOUNCEMENT_KEY)
            await producer.send(
                settings.topic("model-history"), history, key=announcement.model_version.encode()
            )
    finally:
        await producer.stop()
    log_event(
        log,
        "model_announced",
        version=announcement.model_version,
        action=entry.action,
        actor=entry.actor,
        key_id=announcement.key_id or None,
        previous=entry.previous_version or None,
    )
    return entry


async def read_history(settings: Any) -> list[ModelHistoryEntry]:
    """Every entry of the history, in the order written. Records that do not decode are logged (topic
    offset and reason, never their bytes) and left out."""
    entries: list[ModelHistoryEntry] = []
    async for record in read_topic(settings, "model-history", settings.promotion.history_timeout_s):
        try:
            entries.append(decode(record.value or b"", ModelHistoryEntry))
        except MessageError as exc:
            log_event(
                log, "history_record_skipped", logging.WARNING, **record_position(record), reason=exc.reason
            )
    return entries


def newest_entry(entries: Sequence[ModelHistoryEntry]) -> ModelHistoryEntry | None:
    """The newest announcement of the history (by its time; the last written wins a tie): the model
    scorers serve, when they took it."""
    newest: ModelHistoryEntry | None = None
    for entry in entries:
        if newest is None or entry.announcement.announced_at >= newest.announcement.announced_at:
            newest = entry
    return newest


async def newest_announcement(settings: Any) -> tuple[ModelAnnouncement | None, list[ModelHistoryEntry]]:
    """The newest announcement on ``models`` or in the history that scorers would take (signed by a
    key in ``LINEGUARD_SCORER__TRUSTED_KEYS`` when any is configured): the model they serve once they
    have verified it; None when there is none. Also returns the history read for it."""
    from services.scorer.trust import load_trusted_keys, verify_signature

    trusted = load_trusted_keys(settings.scorer.trusted_keys)

    def acceptable(announcement: ModelAnnouncement) -> bool:
        if not trusted:
            return True
        try:
            verify_signature(announcement, trusted)
        except ModelRefused:
            return False
        return True

    history = await read_history(settings)
    candidates = [entry.announcement for entry in history]
    async for record in read_topic(settings, "models", settings.promotion.history_timeout_s):
        try:
            candidates.append(decode(record.value or b"", ModelAnnouncement))
        except MessageError:
            continue
    newest: ModelAnnouncement | None = None
    for announcement in candidates:
        if acceptable(announcement) and (newest is None or announcement.announced_at > newest.announced_at):
            newest = announcement
    return newest, history
