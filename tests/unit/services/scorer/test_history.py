"""The announcement history's plain parts: the newest entry, who announced, an entry matching its
announcement (the transaction itself is tested on the real broker)."""

from __future__ import annotations

import asyncio

import pytest

from services.scorer import history
from shared.settings import Settings
from tests.support.messages import announcement, history_entry


def test_the_newest_entry_is_by_time_and_the_last_written_wins_a_tie() -> None:
    first = history_entry("a", announced_at=5)
    later = history_entry("b", announced_at=9)
    again = history_entry("c", announced_at=9)
    assert history.newest_entry([]) is None
    assert history.newest_entry([later, first]) == later
    assert history.newest_entry([first, later, again]) == again


def test_the_actor_is_the_account_or_its_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history.getpass, "getuser", lambda: "ana\x1b[31m")
    assert history.current_actor() == "ana[31m"

    def no_name() -> str:
        raise OSError("no user name")

    monkeypatch.setattr(history.getpass, "getuser", no_name)
    assert history.current_actor().startswith("uid-")
    entry = history.history_entry(announcement("m1"), action="rollback", previous_version="m2")
    assert entry.actor.startswith("uid-") and entry.action == "rollback"


def test_an_entry_about_another_announcement_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="another announcement"):
        asyncio.run(
            history.publish_announcement(
                Settings(kafka_bootstrap="127.0.0.1:1"), announcement("m1"), history_entry("m2")
            )
        )


def test_a_long_reason_is_cut_to_the_wire_limit() -> None:
    from shared.limits import TEXT_MAX
    from shared.messages.codec import encode

    entry = history.history_entry(announcement("m1"), reason="x" * (TEXT_MAX + 10), actor="ana")
    assert len(entry.reason) == TEXT_MAX and encode(entry)
