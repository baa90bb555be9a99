"""The delivery ledger: which alerts went out, kept on disk so a restart (even after SIGKILL)
neither sends an alert twice nor forgets the de-duplication window.

One JSON line per state change, appended and fsynced before the service moves on:

- ``sending`` (with the idempotency key) just before the webhook POST,
- ``delivered`` after the webhook's 2xx (or, without a webhook, after the alert is logged),
- ``dead_lettered`` after the DLQ acknowledged the alert's record.

Offsets are committed after all three, so a re-delivered alert finds its fate here: ``delivered``
or ``dead_lettered`` is not sent again; ``sending`` means the process died during the POST, when
the webhook may or may not have taken it: it is sent again with the same ``Idempotency-Key``
(a receiver that honours the key sees it once; that one window is at-least-once by nature of HTTP).

Bounded: entries older than the retention are dropped when the file is compacted (at start and
whenever it has grown to twice its live entries), and at most ``max_entries`` are kept (the
oldest go first, counted by ``lineguard_alerts_evictions_total{map="ledger"}``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from services.alerts import metrics
from shared.messages.schemas import AlertEvent

SENDING = "sending"
DELIVERED = "delivered"
DEAD_LETTERED = "dead_lettered"
STATES = (SENDING, DELIVERED, DEAD_LETTERED)

DedupKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class Entry:
    alert_id: str
    state: str
    key: str  # the idempotency key it was (or is being) sent with
    dedup: DedupKey
    raised_at: int  # ns, the alert's own time: the de-duplication window is measured on it
    at: float  # wall-clock seconds of the state change


def dedup_key(alert: AlertEvent) -> DedupKey:
    return (alert.kind, alert.line_id, alert.station_id, alert.product_class)


class DeliveryLedger:
    def __init__(
        self,
        path: Path,
        *,
        retention_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, Entry] = {}  # by alert id, oldest first
        self._lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._compact()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self._file.close()

    def get(self, alert_id: str) -> Entry | None:
        return self._entries.get(alert_id)

    def entries(self) -> Iterable[Entry]:
        return self._entries.values()

    def record(self, alerts: list[AlertEvent], state: str, key: str) -> None:
        """Durably note ``state`` for each alert (fsynced before returning)."""
        if state not in STATES:
            raise ValueError(f"unknown ledger state {state!r}")
        now = self.clock()
        for alert in alerts:
            entry = Entry(alert.alert_id, state, key, dedup_key(alert), alert.raised_at, now)
            self._put(entry)
            self._file.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
            self._lines += 1
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._lines > 2 * max(len(self._entries), 1000):
            self._file.close()
            self._compact()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _put(self, entry: Entry) -> None:
        self._entries.pop(entry.alert_id, None)  # re-inserted: newest last
        self._entries[entry.alert_id] = entry
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
            metrics.EVICTIONS.labels("ledger").inc()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    data = json.loads(line)
                    entry = Entry(
                        alert_id=str(data["alert_id"]),
                        state=str(data["state"]),
                        key=str(data["key"]),
                        dedup=tuple(str(part) for part in data["dedup"]),  # type: ignore[arg-type]
                        raised_at=int(data["raised_at"]),
                        at=float(data["at"]),
                    )
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash mid-write
                if entry.state in STATES and len(entry.dedup) == 4:
                    self._put(entry)

    def _compact(self) -> None:
        """Rewrite the file with the live entries only (atomically)."""
        oldest = self.clock() - self.retention_s
        live = [e for e in self._entries.values() if e.at >= oldest]
        self._entries = {e.alert_id: e for e in live}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for entry in live:
                handle.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._lines = len(live)
        metrics.LEDGER_ENTRIES.set(len(live))
