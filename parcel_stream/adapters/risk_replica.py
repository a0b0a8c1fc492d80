"""A worker's copy of the learned model's counts, kept up to date from the change log.

Every batch needs the counts of its parcels' keys (``read_risk``): thousands of keys a
batch, almost all of them the same from one batch to the next, and changed only by exam
results, warm starts and pruning. Reading them from Redis each batch cost the worker
3.5–5 µs and Redis 6–10 µs of CPU per parcel (``benchmarks/RESULTS.md``). So the store
keeps a copy per shard, and before each batch asks Redis only what changed since the change
number it holds (``redis_lua.RISK_SYNC_LUA``: one small call per shard, atomic with the
counts), then looks the batch's keys up in the copy. What a batch reads is exactly what a
read from Redis at that moment would give: the copy is brought to the store's state as of
the sync before every batch.

A copy is loaded whole when it has none yet, or when the log cannot say what changed (it
was trimmed, or the store was cleared): the change number is read first, the hash scanned
(``HSCAN``, without blocking Redis), then the changes since that number applied, which
fixes whatever moved during the scan. Above ``max_keys`` keys a shard is not copied: its
counts are read from Redis each batch as before (``PARCEL_RISK_REPLICA_KEYS``), and a
load is tried again every ten minutes.

The copy is an open-addressing hash table in compiled code (ids, a slot state, rows), so a
change costs its own keys and a lookup about 20 ns a key, whatever the copy's size; it
holds between 0.3 and 0.6 of its slots (33 bytes a slot).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.risk_keys import home_slot, next_slot

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
EMPTY, FULL, GONE = 0, 1, 2


def unpack_ids(blob: bytes) -> U64:
    """Key ids from their 8-byte big-endian fields."""
    return np.frombuffer(blob, dtype=">u8").astype(np.uint64)


def unpack_rows(blob: bytes) -> F64:
    """[n, v, t] rows from their packed little-endian doubles."""
    return np.frombuffer(blob, dtype="<f8").reshape(-1, 3).copy()


@njit(cache=True)
def _find(keys: U64, state: I8, k: np.uint64) -> np.int64:  # pragma: no cover
    mask = np.uint64(keys.shape[0] - 1)
    s = home_slot(k, mask)
    while True:
        st = state[s]
        if st == EMPTY:
            return np.int64(-1)
        if st == FULL and keys[s] == k:
            return s
        s = next_slot(s, mask)


@njit(cache=True)
def _lookup(keys: U64, state: I8, rows: F64, ids: U64, out: F64) -> None:  # pragma: no cover
    for i in range(ids.shape[0]):
        s = _find(keys, state, ids[i])
        if s >= 0:
            out[i, 0], out[i, 1], out[i, 2] = rows[s, 0], rows[s, 1], rows[s, 2]


@njit(cache=True)
def _put(
    keys: U64, state: I8, rows: F64, ids: U64, vals: F64
) -> tuple[int, int]:  # pragma: no cover
    """Set (or drop, NaN) each id's row; returns the change in full and in gone slots."""
    mask = np.uint64(keys.shape[0] - 1)
    full, gone = 0, 0
    for i in range(ids.shape[0]):
        k = ids[i]
        drop = np.isnan(vals[i, 0])
        s = _find(keys, state, k)
        if s >= 0:
            if drop:
                state[s] = GONE
                full -= 1
                gone += 1
            else:
                rows[s, 0], rows[s, 1], rows[s, 2] = vals[i, 0], vals[i, 1], vals[i, 2]
        elif not drop:
            s = home_slot(k, mask)
            while state[s] == FULL:
                s = next_slot(s, mask)
            if state[s] == GONE:
                gone -= 1
            state[s], keys[s] = FULL, k
            rows[s, 0], rows[s, 1], rows[s, 2] = vals[i, 0], vals[i, 1], vals[i, 2]
            full += 1
    return full, gone


class RiskReplica:
    """One shard's counts by key id, and the number of the last change they include (-1:
    not loaded)."""

    __slots__ = ("_keys", "_state", "_rows", "_full", "_gone", "seq", "too_big", "retry_at")

    def __init__(self) -> None:
        self.seq = -1
        self.too_big = False  # over the limit at its last load: read from Redis instead
        self.retry_at = 0.0  # then, when to try loading it again (monotonic seconds)
        self._clear(16)

    def _clear(self, slots: int) -> None:
        self._keys: U64 = np.zeros(slots, dtype=np.uint64)
        self._state: I8 = np.zeros(slots, dtype=np.int8)
        self._rows: F64 = np.zeros((slots, 3))
        self._full = self._gone = 0

    def __len__(self) -> int:
        return self._full

    def items(self) -> tuple[U64, F64]:
        """Every key id held (ascending) and its row."""
        at = np.flatnonzero(self._state == FULL)
        order = np.argsort(self._keys[at])
        return self._keys[at][order], self._rows[at][order]

    def lookup(self, ids: U64) -> F64:
        """[n, v, t] of each id, NaN when the shard has no counts for it."""
        out = np.full((len(ids), 3), np.nan)
        if self._full and len(ids):
            _lookup(self._keys, self._state, self._rows, np.ascontiguousarray(ids, np.uint64), out)
        return out

    def _room(self, more: int) -> None:
        """Rehash when the table would be over 0.6 full (gone slots included)."""
        slots = len(self._keys)
        if (self._full + self._gone + more) * 5 <= slots * 3:
            return
        ids, rows = self.items()
        need = 16
        while need * 3 < (self._full + more) * 5 * 2:  # about 0.3 full afterwards
            need *= 2
        self._clear(need)
        self._put(ids, rows)

    def _put(self, ids: U64, rows: F64) -> None:
        full, gone = _put(self._keys, self._state, self._rows, ids, rows)
        self._full += full
        self._gone += gone

    def load(self, ids: U64, rows: F64, seq: int) -> None:
        """Replace the copy (a whole load, as of change ``seq``)."""
        self._clear(16)
        self._room(len(ids))
        self._put(np.ascontiguousarray(ids, np.uint64), np.ascontiguousarray(rows, np.float64))
        self.seq = seq

    def apply(self, ids: U64, rows: F64, seq: int) -> None:
        """Bring the copy to change ``seq``: these keys' counts now (NaN: dropped). Older
        changes than the copy's are ignored (the copy is newer already)."""
        if seq <= self.seq:
            return
        self.seq = seq
        if len(ids):
            self._room(len(ids))
            self._put(np.ascontiguousarray(ids, np.uint64),
                      np.ascontiguousarray(rows, np.float64))  # fmt: skip
