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
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


def unpack_ids(blob: bytes) -> U64:
    """Key ids from their 8-byte big-endian fields."""
    return np.frombuffer(blob, dtype=">u8").astype(np.uint64)


def unpack_rows(blob: bytes) -> F64:
    """[n, v, t] rows from their packed little-endian doubles."""
    return np.frombuffer(blob, dtype="<f8").reshape(-1, 3).copy()


class RiskReplica:
    """One shard's counts: key ids sorted, their rows beside them, and the number of the
    last change they include (-1: not loaded)."""

    __slots__ = ("ids", "rows", "seq", "too_big", "retry_at")

    def __init__(self) -> None:
        self.ids: U64 = np.zeros(0, dtype=np.uint64)
        self.rows: F64 = np.zeros((0, 3))
        self.seq = -1
        self.too_big = False  # over the limit at its last load: read from Redis instead
        self.retry_at = 0.0  # then, when to try loading it again (monotonic seconds)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: U64) -> F64:
        """[n, v, t] of each id, NaN when the shard has no counts for it."""
        out = np.full((len(ids), 3), np.nan)
        if not len(self.ids) or not len(ids):
            return out
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        hit = self.ids[at] == ids
        out[hit] = self.rows[at[hit]]
        return out

    def load(self, ids: U64, rows: F64, seq: int) -> None:
        """Replace the copy (a whole load, as of change ``seq``)."""
        order = np.argsort(ids, kind="stable")
        self.ids, self.rows, self.seq = ids[order], rows[order], seq

    def apply(self, ids: U64, rows: F64, seq: int) -> None:
        """Bring the copy to change ``seq``: these keys' counts now (NaN: dropped). Older
        changes than the copy's are ignored (the copy is newer already)."""
        if seq <= self.seq:
            return
        self.seq = seq
        if not len(ids):
            return
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], rows[order]
        gone = np.isnan(rows[:, 0])
        at = np.searchsorted(self.ids, ids)
        hit = at < len(self.ids)
        hit[hit] = self.ids[at[hit]] == ids[hit]
        update = hit & ~gone
        self.rows[at[update]] = rows[update]
        drop, new = at[hit & gone], ~hit & ~gone
        if not len(drop) and not new.any():
            return
        keep_ids = np.delete(self.ids, drop)
        keep_rows = np.delete(self.rows, drop, axis=0)
        where = np.searchsorted(keep_ids, ids[new])
        self.ids = np.insert(keep_ids, where, ids[new])
        self.rows = np.insert(keep_rows, where, rows[new], axis=0)
