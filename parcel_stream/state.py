"""The state layer declared once: what is kept, under which key, for how long; and the
contract every store serves (the in-memory twin and Redis, one shared test suite).

``STATE_KEYS`` is the key scheme. The Redis store builds its keys (in Python and in its
Lua scripts) from it, and the documented key table (``docs/state.md``) is generated from
it: ``python -m parcel_stream.state`` prints the table, a test keeps the page equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState
from parcel_stream.reputation import ExamDelta, ParcelRef, Partition, ReputationUpdate
from parcel_stream.sequence import ENTITY_FIELDS, PAIR_FIELDS, StoredState

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class StateKey:
    """One kind of key: ``{prefix}:{segment}:{id}``."""

    segment: str  # the key's kind, after the prefix ("shipper")
    suffix: str  # what follows the id ("" or ":violations")
    id_doc: str  # what the id is
    redis_type: str
    contents: str
    lifetime: str

    def pattern(self) -> str:
        return (
            f"ps:{self.segment}:{{{self.id_doc}}}{self.suffix}"
            if self.id_doc
            else (f"ps:{self.segment}{self.suffix}")
        )

    def key(self, prefix: str, ident: str = "") -> str:
        return (
            f"{prefix}:{self.segment}:{ident}{self.suffix}"
            if self.id_doc
            else (f"{prefix}:{self.segment}{self.suffix}")
        )

    def keys(self, prefix: str, idents: Iterable[str]) -> list[str]:
        """``key`` of each id, built in one pass (a kind with ids)."""
        head = f"{prefix}:{self.segment}:"
        if not self.suffix:
            return list(map(head.__add__, idents))
        return [f"{head}{ident}{self.suffix}" for ident in idents]


_ENTITY = ", ".join(f"`{f}`" for f in ENTITY_FIELDS)
SHIPPER = StateKey(
    "shipper", "", "id", "hash",
    f"`p0`, `p1`: {_ENTITY} packed as little-endian doubles, 64 bytes a field at most "
    "(lifetime counts, first and last "
    "manifest time, recent-weighted parcels, holds, exams and violations brought up to date "
    "at `t`; earlier versions kept one field each, packed when next read); lifetime `exams`, "
    "`violations`; "
    "`dn` newest manifest day and `dd` the parcel counts of the 16 days up to it; `v` version "
    "(compare-and-set); `x` the day (UTC, days since 1970) its TTL was last set",
    "`PARCEL_ENTITY_TTL_DAYS` (400) after the last update, at most a day more: set on the "
    "first write of each day, a day longer",
)  # fmt: skip
SELLER = StateKey(
    "seller", "", "seller id}@{marketplace", "hash",
    "the same for a marketplace seller named in the manifest's `seller`, without day counts",
    "as the shipper's",
)  # fmt: skip
ADDRESS_SHIPPERS = StateKey(
    "addr", ":shippers", "address key", "set",
    "the shippers seen sending to a consignee address (60-bit hashes of their ids: exact)",
    "`PARCEL_ADDRESS_TTL_DAYS` (30) after the last update",
)  # fmt: skip
ADDRESS_VIOLATIONS = StateKey(
    "addr", ":violations", "address key", "hash",
    "recent-weighted violations found at the address (`rv` at `t`)",
    "`PARCEL_EXAM_TTL_DAYS` (180)",
)  # fmt: skip
PAIR = StateKey(
    "pair", "", "address key}:{shipper id", "hash",
    ", ".join(f"`{f}`" for f in PAIR_FIELDS)
    + " of the open split-shipment window (`PARCEL_SPLIT_WINDOW_HOURS`, default 72 h of "
    "manifest time); `v` version",
    "2 windows",
)  # fmt: skip
REMEMBERED = StateKey(
    "pid", "", "parcel id", "string",
    "every scored parcel: its content hash, decision, and what it added to the state "
    "(repeats and amendments)",
    "`PARCEL_REPEAT_WINDOW_DAYS`, default 14 days",
)  # fmt: skip
EXAMINABLE = StateKey(
    "parcel", "", "parcel id", "hash",
    "a parcel sent to review or hold: shipper, address key, seller, the rules that fired, its "
    "rule-set score (for exam results and the learner); `k` its learned keys' ids (a held "
    "parcel's also what names them, `risk.KeyParts`), features as scored and selection "
    "probability (MessagePack; refs stored as JSON or with their keys' names by earlier "
    "versions still read), when the learned model scores",
    "`PARCEL_EXAM_TTL_DAYS` (180)",
)  # fmt: skip
RISK = StateKey(
    "risk", "", "", "hash",
    "the learned model's counts, one field per key (an HS code, a cross, a declarant, an "
    "attribute: `risk.py`): field = the key's 64-bit id (8 bytes, big-endian), value = its "
    "examinations, violations (selection-weighted, decayed) and time, 3 little-endian doubles",
    "a key is dropped once its decayed examinations fall under `PARCEL_RISK_EVICT_BELOW` "
    "(0.25)",
)  # fmt: skip
RISK_NAMES = StateKey(
    "risk", ":names", "", "hash",
    "the names of the learned keys with at least 5 examinations (field = key id)",
    "dropped with the key",
)  # fmt: skip
RISK_LOG = StateKey(
    "risk", ":log", "", "stream",
    "the learned keys whose counts changed, in order: entry id = the change's number (`N-0`), "
    "field `k` = the keys' ids (8 bytes each). Workers keep a copy of the counts and read only "
    "what changed since their last batch (`PARCEL_RISK_REPLICA_KEYS`)",
    "the last 20,000 changes (trimmed as it grows)",
)  # fmt: skip
RISK_SEQ = StateKey(
    "risk", ":seq", "", "string",
    "the number of the last change to the learned counts (`risk:log`)",
    "no expiry",
)  # fmt: skip
EXAM = StateKey("exam", "", "exam id", "string", "marks an applied examination result",
                "`PARCEL_EXAM_TTL_DAYS` (180)")  # fmt: skip
LEARNER = StateKey("learner", "", "", "hash", "the adaptive weights (version, JSON state)",
                   "no expiry")  # fmt: skip
LEARNER_HISTORY = StateKey("learner", ":history", "", "list", "the last 100 learner states",
                           "no expiry")  # fmt: skip
WATERMARK = StateKey("wm", "", "topic}:{partition", "string", "the last input offset applied",
                     "no expiry")  # fmt: skip
OUTBOX = StateKey(
    "ob", "", "topic}:{partition", "sorted set",
    "decision digests of applied records whose outputs are not yet acknowledged (score = "
    "offset)",
    "7 days; pruned once acknowledged",
)  # fmt: skip

LANES = StateKey(
    "lanes", "", "topic}:{partition", "string",
    "the learned model's hold thresholds per hub for lanes by capacity, as of the partition's "
    "watermark (msgpack: hub -> log-odds)",
    "no expiry",
)  # fmt: skip

NORMS = StateKey(
    "norms", "", "topic}:{partition", "hash",
    "the learned model's value norms of the parcels of the partition: per HS6, HS4 and HS2 "
    "key id (8 bytes) the decayed weight, mean and M2 of log USD per kg and their time (4 "
    "little-endian doubles), as of the partition's watermark",
    "no expiry (bounded by the HS codes)",
)  # fmt: skip

# Redis Cluster only (``adapters/redis_cluster.py``): a batch between its two phases.
PREP = StateKey(
    "prep", "", "topic}:{partition", "string",
    "cluster only: `p:{token}` while a batch of the partition is prepared in the shard; "
    "`x:{token}` fences a batch that a recovery released",
    "until committed or released; fences 1 day",
)  # fmt: skip
PREPDATA = StateKey(
    "prepdata", "", "token", "hash",
    "cluster only: a prepared batch's write for the shard (`a`, `b`), its shards and offsets "
    "(`m`), its partition marks (`p`)",
    "until committed or released (at most 7 days)",
)  # fmt: skip
LOCKS = StateKey(
    "locks", "", "", "hash",
    "cluster only: the shard's keys held by prepared batches (key -> token)",
    "each field until its batch is committed or released",
)  # fmt: skip

STATE_KEYS: tuple[StateKey, ...] = (
    SHIPPER, SELLER, ADDRESS_SHIPPERS, ADDRESS_VIOLATIONS, PAIR, REMEMBERED, EXAMINABLE, EXAM,
    LEARNER, LEARNER_HISTORY, WATERMARK, OUTBOX, PREP, PREPDATA, LOCKS, RISK, RISK_NAMES, RISK_LOG,
    RISK_SEQ, LANES, NORMS,
)  # fmt: skip


def declared(key: str, prefix: str) -> StateKey | None:
    """The declared kind of a store key, None when it is not declared."""
    for k in STATE_KEYS:
        head = f"{prefix}:{k.segment}"
        if k.id_doc:
            if key.startswith(head + ":") and key.endswith(k.suffix):
                ident = key[len(head) + 1 : len(key) - len(k.suffix)]
                rest_ok = all(
                    not key.endswith(o.suffix)
                    for o in STATE_KEYS
                    if o.segment == k.segment and len(o.suffix) > len(k.suffix)
                )
                if ident and rest_ok:
                    return k
        elif key == head + k.suffix:
            return k
    return None


def key_table() -> str:
    """The documented key table (markdown), generated from ``STATE_KEYS``."""
    rows = ["| key | type | contents | lifetime |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k.pattern()}` | {k.redis_type} | {k.contents} | {k.lifetime} |"
             for k in STATE_KEYS]  # fmt: skip
    return "\n".join(rows)


class StateStore(Protocol):
    """What the batch step, the exam step and the backtest need of a store. The in-memory
    twin (``reputation.InMemoryStore``) and the Redis store (synchronously:
    ``adapters.redis_store.BlockingRedisStore``) serve it; ``tests/integration/
    test_store_contract.py`` runs one suite on both."""

    def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]: ...

    def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]: ...

    def apply(self, update: ReputationUpdate) -> bool: ...

    def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]: ...

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]: ...

    def exams_seen(self, exam_ids: list[str]) -> list[bool]: ...

    def read_learner(self) -> LearnerState: ...

    def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None: ...

    def read_risk(self, ids: U64) -> F64: ...

    def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]: ...

    def prune_risk(self, now_ms: float) -> int: ...

    def read_norms(self, wanted: dict[Partition, U64]) -> dict[Partition, F64]: ...


class AsyncStateStore(Protocol):
    """The same contract, awaited: what the worker's batch and exam steps use. Served by
    ``adapters.redis_store.RedisReputationStore`` and, for tests without Redis, by
    :class:`AsyncTwin`."""

    async def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]: ...

    async def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]: ...

    async def apply(self, update: ReputationUpdate) -> bool: ...

    async def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]: ...

    async def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]: ...

    async def exams_seen(self, exam_ids: list[str]) -> list[bool]: ...

    async def read_learner(self) -> LearnerState: ...

    async def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None: ...

    async def read_risk(self, ids: U64) -> F64: ...

    async def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]: ...

    async def prune_risk(self, now_ms: float) -> int: ...

    async def read_norms(self, wanted: dict[Partition, U64]) -> dict[Partition, F64]: ...

    async def ping(self) -> bool: ...


class AsyncTwin:
    """A synchronous store (the in-memory twin) behind the async contract, so that the
    worker's batch step runs in unit tests without Redis or Kafka."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]:
        return self.store.read_parcels(parcel_ids)

    async def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]:
        return self.store.read(keys, partitions, combos)

    async def apply(self, update: ReputationUpdate) -> bool:
        return self.store.apply(update)

    async def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]:
        return self.store.read_outbox(wanted)

    async def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]:
        return self.store.lookup_parcels(parcel_ids)

    async def exams_seen(self, exam_ids: list[str]) -> list[bool]:
        return self.store.exams_seen(exam_ids)

    async def read_learner(self) -> LearnerState:
        return self.store.read_learner()

    async def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None:
        return self.store.apply_exams(deltas, learner)

    async def read_risk(self, ids: U64) -> F64:
        return self.store.read_risk(ids)

    async def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]:
        return self.store.read_lanes(partitions)

    async def prune_risk(self, now_ms: float) -> int:
        return self.store.prune_risk(now_ms)

    async def read_norms(self, wanted: dict[Partition, U64]) -> dict[Partition, F64]:
        return self.store.read_norms(wanted)

    async def ping(self) -> bool:
        return True


if __name__ == "__main__":
    print(key_table())
