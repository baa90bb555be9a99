"""The last N (station, frame id)s the bridge applied, in memory of a fixed size.

The bridge de-duplicates on (station, frame id) over a window of the last ``capacity`` verdicts. A
Python dict of digests grows by about 230 bytes a verdict until the window is full (24 MB for the
default 100,000), which on a long run looks exactly like a leak. Here the window is two arrays
allocated and written once at start (16 bytes a digest and an 8-byte slot per table bucket, about
3.7 MB for 100,000), so the bridge's memory is flat from its first verdict.

The digests sit in a ring (oldest overwritten first) and are found through an open-addressing
table with linear probing; a digest that leaves the ring leaves the table by backward-shift
deletion, so no tombstones accumulate and lookups stay short.
"""

from __future__ import annotations

import hashlib

import numpy as np

_EMPTY = -1


def digest(station: str, frame_id: str) -> bytes:
    """16 bytes that stand for (station, frame id)."""
    return hashlib.blake2b(f"{station}\0{frame_id}".encode(), digest_size=16).digest()


class DigestWindow:
    """A set of the last ``capacity`` 16-byte digests added (first in, first out)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # Written in full now, so every page is resident from the start (zeros would be lazy).
        self._ring = np.full((capacity, 2), 0xFFFF_FFFF_FFFF_FFFF, dtype=np.uint64)
        buckets = 1 << max(3, (2 * capacity - 1).bit_length())  # at most half full
        self._mask = buckets - 1
        self._table = np.full(buckets, _EMPTY, dtype=np.int64)  # bucket -> ring slot
        self._next = 0  # the ring slot written next
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: bytes) -> bool:
        return self._find(self._words(key))[1] != _EMPTY

    def add(self, key: bytes) -> tuple[bool, bool]:
        """(added, evicted): ``added`` is False when ``key`` is already in the window (nothing
        changes); ``evicted`` is True when the oldest digest made room for it."""
        words = self._words(key)
        bucket, slot = self._find(words)
        if slot != _EMPTY:
            return False, False
        evicted = self._size == self.capacity
        slot = self._next
        if evicted:
            self._delete(self._bucket_of(slot))
            bucket, _ = self._find(words)  # the deletion may have moved the free bucket
        else:
            self._size += 1
        self._ring[slot] = words
        self._table[bucket] = slot
        self._next = (slot + 1) % self.capacity
        return True, evicted

    # ---- the table --------------------------------------------------------------------------

    @staticmethod
    def _words(key: bytes) -> tuple[int, int]:
        if len(key) != 16:
            raise ValueError("a digest is 16 bytes")
        return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")

    def _home(self, words: tuple[int, int]) -> int:
        return words[0] & self._mask

    def _find(self, words: tuple[int, int]) -> tuple[int, int]:
        """(bucket, ring slot) of ``words``, or (the free bucket it would go in, _EMPTY)."""
        bucket = self._home(words)
        while True:
            slot = int(self._table[bucket])
            if slot == _EMPTY:
                return bucket, _EMPTY
            ring = self._ring[slot]
            if int(ring[0]) == words[0] and int(ring[1]) == words[1]:
                return bucket, slot
            bucket = (bucket + 1) & self._mask

    def _bucket_of(self, slot: int) -> int:
        ring = self._ring[slot]
        bucket, found = self._find((int(ring[0]), int(ring[1])))
        assert found == slot
        return bucket

    def _delete(self, bucket: int) -> None:
        """Empty ``bucket`` and move later entries of its probe run back, so that every entry stays
        reachable from its home bucket without tombstones."""
        table, mask = self._table, self._mask
        hole = bucket
        probe = bucket
        while True:
            probe = (probe + 1) & mask
            slot = int(table[probe])
            if slot == _EMPTY:
                break
            ring = self._ring[slot]
            home = int(ring[0]) & mask
            # The entry at ``probe`` may move into the hole only if its home is not cyclically
            # within (hole, probe]: otherwise the hole does not lie on its probe path.
            if (hole < probe and hole < home <= probe) or (hole > probe and (home > hole or home <= probe)):
                continue
            table[hole] = slot
            hole = probe
        table[hole] = _EMPTY
