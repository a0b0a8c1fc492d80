"""State in Redis: per batch two reads (remembered parcel ids, then everything else) and
one atomic write, each a single script call with one msgpack argument.

Key layout (prefix from ``PARCEL_REDIS_KEY_PREFIX``, default ``ps``):

- ``ps:shipper:{id}`` hash: ``seen``, ``value_usd``, ``holds``, ``first_seen_ms``,
  ``last_seen_ms``; recent-weighted ``rs``, ``rh``, ``re``, ``rv`` (parcels, holds, exams,
  violations) as of ``t`` (ms), halved every half-life; lifetime ``exams``,
  ``violations``; ``dn`` (newest manifest day) and ``dd`` (the parcel counts of the 16
  days up to it, comma-separated); ``v``, the version every write bumps. Expires
  ``PARCEL_ENTITY_TTL_DAYS`` after its last update (bounded memory).
- ``ps:seller:{seller id}@{marketplace}`` hash: the same for marketplace sellers, no days.
- ``ps:addr:{address key}:shippers`` set of the shippers (60-bit hashes of their ids)
  seen sending to a consignee address (the key is a hash of the normalised address);
  expires 30 days after its last update. ``ps:addr:{address key}:violations`` hash:
  recent-weighted ``rv`` at ``t``.
- ``ps:pair:{address key}:{shipper id}`` hash: ``start_ms``, ``value_usd``, ``parcels`` of
  the open split-shipment window (by manifest time) and its version ``v``.
- ``ps:pid:{parcel id}`` string: a scored parcel's content hash (16 hex digits) and its
  remembered decision and contribution (msgpack, ``repeats.Remembered``); expires after
  the repeat window.
- ``ps:parcel:{parcel id}`` hash: shipper id (``s``), address key (``a``), seller (``l``),
  fired rules (``r``) and rule-set score (``c``) of a parcel sent to review or hold, so
  an examination result can be traced and learned from (180 days).
- ``ps:exam:{exam id}`` marks an applied examination result (duplicates are ignored).
- ``ps:learner`` hash (``version``, JSON ``state``) and ``ps:learner:history`` list: the
  adaptive weights and their last versions.
- ``ps:wm:{topic}:{partition}`` string: the last input offset applied from that partition.
- ``ps:ob:{topic}:{partition}`` sorted set (score = offset): decision digests of applied
  records whose outputs are not yet acknowledged (``outbox.py``); about one batch.

The write script applies a batch only if the watermarks, entity versions and remembered
parcels it was computed against are still current (compare-and-set), so a redelivered
batch changes nothing twice and a batch scored on state that moved is scored again. The
scripts build their keys from the prefix: for Redis Cluster use a prefix with a hash tag.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import operator
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import accumulate, chain, repeat
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from parcel_stream.adapters.redis_lua import (
    APPLY_LUA,
    EXAMS_LUA,
    PACKED_PARTS,
    PARCELS_LUA,
    READ_LUA,
    RISK_CLEAR_LUA,
    RISK_PRUNE_LUA,
    RISK_READ_LUA,
    RISK_SYNC_LUA,
    RISK_WRITE_LUA,
    SELLER_WIDTH,
    SHIPPER_WIDTH,
    keys_in,
)
from parcel_stream.adapters.risk_replica import RiskReplica, unpack_ids, unpack_rows
from parcel_stream.adapters.security import redis_options
from parcel_stream.columns import RowCache
from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState, decode_state, encode_state
from parcel_stream.outbox import decode_digest
from parcel_stream.reputation import (
    DEFAULT_HALF_LIFE_MS,
    EntityWrites,
    ExamDelta,
    ParcelRef,
    Partition,
    ReputationUpdate,
    ShipperState,
    entity_columns,
)
from parcel_stream.risk import decode_ref, encode_ref
from parcel_stream.sequence import DAY_SLOTS, ENTITY_FIELDS, EntityTable, StoredState
from parcel_stream.settings import Settings
from parcel_stream.state import (
    ADDRESS_SHIPPERS,
    ADDRESS_VIOLATIONS,
    EXAM,
    EXAMINABLE,
    LANES,
    LEARNER,
    LEARNER_HISTORY,
    NORMS,
    OUTBOX,
    PAIR,
    REMEMBERED,
    RISK,
    RISK_LOG,
    RISK_NAMES,
    RISK_SEQ,
    SELLER,
    SHIPPER,
    WATERMARK,
    StateKey,
)

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

log = logging.getLogger(__name__)
_PACK = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()


@lru_cache(maxsize=1 << 16)
def shipper_member(shipper_id: str) -> str:
    """A shipper as a member of an address's set: a 60-bit integer from a hash of its id,
    so that Redis keeps small sets as compact integer sets (about 8 bytes a member)."""
    digest = hashlib.blake2b(shipper_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big") >> 4)


def _col(values: list[Any]) -> F64:
    return np.array([float(v) if v is not None else 0.0 for v in values], dtype=np.float64)


def _fill_entities(table: EntityTable, flat: list[Any], width: int, days: bool) -> None:
    """Entity rows from the read script's reply (``width`` values per entity: the packed
    values, the version, and for shippers the newest day and the day counts)."""
    n = len(table.ver)
    if not n:
        return
    table.vals[:] = unpack_entities(flat[0::width], n)
    table.ver[:] = [int(v) if v is not None else 0 for v in flat[1::width]]
    if days:
        _fill_days(table, flat[2::width], flat[3::width])


class _DayRows(RowCache):
    """Per stored day-counts text (``days_texts``) its row: the ``DAY_SLOTS`` counts up to
    the newest day (-1 in the first: a text of another length, read one by one). Few
    distinct texts (most days count 0 or a few parcels), so a batch's shippers are looked
    up as row numbers and their counts gathered in one step."""

    width = DAY_SLOTS
    limit = 50_000

    def ids_of(self, raw: Any) -> list[int]:
        counts = _text(raw).split(",") if raw else []
        return [int(c) for c in counts] if len(counts) == DAY_SLOTS else [-1] * DAY_SLOTS


_DAY_ROWS = _DayRows()


def _fill_days(table: EntityTable, dn: list[Any], dd: list[Any]) -> None:
    """The shippers' day counts from the read script's reply: newest day ``dn`` and the
    counts ``dd`` (``days_texts``), into the table's ring (as ``EntityTable.set_days``
    with ``decode_days``), in columns."""
    newest = np.array([int(v) if v is not None else 0 for v in dn], dtype=np.int64)
    has = np.flatnonzero(newest)
    if not len(has):
        return
    _DAY_ROWS.bound()
    texts = [dd[j] if dd[j] else b"" for j in has.tolist()]
    at = np.fromiter(map(_DAY_ROWS.__getitem__, texts), np.int64, len(texts))
    counts = _DAY_ROWS.table()[at]  # after the lookups: they add the rows of new texts
    odd = counts[:, 0] < 0  # another length (or a first count below 0): one by one
    for j in has[odd].tolist():
        table.set_days(j, int(newest[j]), decode_days(int(newest[j]), dd[j]))
    rows, counts = has[~odd], counts[~odd]
    new = newest[rows]
    table.newest_day[rows] = new
    day = new[:, None] - (DAY_SLOTS - 1) + np.arange(DAY_SLOTS)
    r, k = np.nonzero(counts)
    table.slot_day[rows[r], day[r, k] % DAY_SLOTS] = day[r, k]
    table.slot_count[rows[r], day[r, k] % DAY_SLOTS] = counts[r, k]


def parse_read(
    flat: list[Any], n_s: int, n_l: int, n_a: int, n_p: int, n_c: int, n_w: int
) -> tuple[StoredState, list[Any]]:
    """The read script's reply as the batch's stored state, and the raw watermarks."""
    sizes = (SHIPPER_WIDTH * n_s, SELLER_WIDTH * n_l, 3 * n_a, 4 * n_p, n_c, n_w)
    flat = flat + [None] * (sum(sizes) - len(flat))
    parts, at = [], 0
    for size in sizes:
        parts.append(flat[at : at + size])
        at += size
    sh, sl, addr, pr, member, wm = parts
    state = StoredState.empty(n_s, n_l, n_a, n_p, n_c)
    _fill_entities(state.shippers, sh, SHIPPER_WIDTH, days=True)
    _fill_entities(state.sellers, sl, SELLER_WIDTH, days=False)
    state.address_count[:] = _col(addr[0::3])
    state.address_t[:] = _col(addr[1::3])
    state.address_rv[:] = _col(addr[2::3])
    if n_p:
        state.pairs[:] = _col(pr).reshape(n_p, 4)[:, :3]
        state.pair_ver[:] = _col(pr[3::4]).astype(np.int64)
    state.member[:] = [bool(x) for x in member]
    return state, wm


def decode_days(newest: int, raw: bytes | str | None) -> dict[int, int]:
    if not raw:
        return {}
    counts = _text(raw).split(",")
    first = newest - len(counts) + 1
    return {first + k: int(c) for k, c in enumerate(counts) if c != "0"}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _DayTexts(dict[bytes, str]):
    """Per row of day counts (its bytes) its text: few distinct rows, so a batch's are
    looked up rather than each formatted."""

    def __missing__(self, row: bytes) -> str:
        if len(self) > 50_000:
            self.clear()
        got = self[row] = ",".join(map(str, np.frombuffer(row, dtype=np.int64).tolist()))
        return got


_DAY_TEXTS = _DayTexts()


def days_texts(counts: I64) -> list[str]:
    """Each row of day counts as its shipper's one field: the counts of the ``DAY_SLOTS``
    days up to its newest, comma-separated (older days are gone; ``decode_days`` reads
    it back)."""
    rows = np.ascontiguousarray(counts, dtype=np.int64)
    raw = rows.view(np.dtype((np.void, 8 * rows.shape[1]))).ravel() if rows.ndim == 2 else rows
    return list(map(_DAY_TEXTS.__getitem__, raw.tolist()))


def entity_args(kind: StateKey, ws: EntityWrites, prefix: str, days: bool, at: int
                ) -> list[list[Any]]:  # fmt: skip
    """The apply script's entity columns: keys, expected versions, the first byte (Lua
    counts from 1) of each one's packed values (``pack_entities``: the batch's, at byte
    ``at`` of the script's binary argument), and for shippers the newest days and the day
    counts (0 and "" for sellers)."""
    keys = kind.keys(prefix, ws.ids)
    width, n = ENTITY_BYTES, len(keys)
    firsts = list(range(at, at + width * n, width))
    if not days:
        return [keys, ws.expected_ver.tolist(), firsts, [0] * n, [""] * n]
    return [keys, ws.expected_ver.tolist(), firsts, ws.newest_day.tolist(),
            days_texts(ws.day_counts)]  # fmt: skip


ENTITY_BYTES = 8 * len(ENTITY_FIELDS)
_ZERO_ENTITY = bytes(ENTITY_BYTES)


def pack_entities(vals: F64) -> bytes:
    """Entity values as stored (fields ``PACKED_PARTS`` joined): ``ENTITY_FIELDS`` in
    order, little-endian doubles, so they read back bit for bit."""
    return np.ascontiguousarray(vals, dtype="<f8").tobytes()


def joined_parts(parts: list[bytes | None]) -> bytes | None:
    """An entity's packed values from its ``PACKED_PARTS`` fields, as read (None: none)."""
    return b"".join(x or b"" for x in parts) if parts and parts[0] is not None else None


def unpack_entities(packed: list[Any], n: int) -> F64:
    """The values of ``n`` entities from their packed values (None: absent, zeros)."""
    if not n:
        return np.zeros((0, len(ENTITY_FIELDS)))
    none = _ZERO_ENTITY
    raw = b"".join(x if x is not None else none for x in packed)
    if len(raw) != n * ENTITY_BYTES:  # some stored before fields were added: those read 0
        raw = b"".join((x or b"").ljust(ENTITY_BYTES, b"\0") for x in packed)
    out: F64 = np.frombuffer(raw, dtype="<f8").reshape(n, len(ENTITY_FIELDS)).astype(np.float64)
    return out


def num_text(v: float) -> str:
    """A state field as stored: a whole number without a point (``int()`` and ``HINCRBY``
    read it), any other in its shortest form that reads back as the same double."""
    return str(int(v)) if v.is_integer() else repr(v)


def risk_rows(packed: bytes, n: int) -> F64:
    """[n, v, t] per key from the read script's packed doubles (NaN: not stored)."""
    out = np.frombuffer(packed, dtype="<f8").reshape(n, 3) if n else np.zeros((0, 3))
    return out.copy()


def risk_spec(d: ExamDelta, half_life_ms: float, ids: list[int] | None = None) -> str:
    """An exam result's count on its learned keys (``RISK_COUNT_LUA``): JSON [weight,
    half-life ms, then per key its id (16 hex digits) and name]; "" for none."""
    if d.risk is None or d.risk_weight <= 0 or not d.risk.ids:
        return ""
    names = dict(zip(d.risk.ids, d.risk.names(), strict=False))  # none: a review's keys
    pairs = [x for k in (d.risk.ids if ids is None else ids)
             for x in (f"{k:016x}", names.get(k, ""))]  # fmt: skip
    return _JSON.encode([d.risk_weight, float(half_life_ms), *pairs]).decode()


class RedisReputationStore:
    """Async Redis implementation of the reputation store contract."""

    def __init__(
        self,
        url: str,
        prefix: str = "ps",
        ttl_s: int = 400 * 86_400,
        socket_timeout_s: float = 5.0,
        window_ms: float = 72 * 3_600_000.0,
        address_ttl_s: int = 30 * 86_400,
        exam_ttl_s: int = 180 * 86_400,
        half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        learner_history: int = 100,
        parcel_ttl_s: int = 14 * 86_400,
        risk_evict_below: float = 0.25,
        risk_half_life_ms: float = 180.0 * 86_400_000,
        risk_replica_keys: int = 1_000_000,
        **client_options: Any,
    ) -> None:
        # a copy of the learned counts per shard, up to this many keys (0: none)
        self.risk_replica_keys = risk_replica_keys
        self._replicas: dict[int, RiskReplica] = {}
        self._replica_lock = asyncio.Lock()
        self.parcel_ttl_s = parcel_ttl_s
        self.risk_evict_below = risk_evict_below
        self.risk_half_life_ms = risk_half_life_ms
        self.exam_ttl_s = exam_ttl_s
        self.window_ms = window_ms
        self.address_ttl_s = address_ttl_s
        self.half_life_ms = half_life_ms
        self.learner_keep = learner_history
        self.client: Any = self._connect(url, socket_timeout_s, client_options)
        # called with the number of masters that acknowledged a write to fewer replicas
        # than asked (Redis Cluster with WAIT on)
        self.on_wait_short: Callable[[int], object] = lambda _n: None
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._apply = self.client.register_script(keys_in(APPLY_LUA))
        self._read = self.client.register_script(keys_in(READ_LUA))
        self._exams = self.client.register_script(keys_in(EXAMS_LUA))
        self._parcels = self.client.register_script(keys_in(PARCELS_LUA))
        self._risk_read = self.client.register_script(RISK_READ_LUA)
        self._risk_prune = self.client.register_script(RISK_PRUNE_LUA)
        self._risk_sync = self.client.register_script(RISK_SYNC_LUA)
        self._risk_write = self.client.register_script(RISK_WRITE_LUA)
        self._risk_clear = self.client.register_script(RISK_CLEAR_LUA)

    def _connect(self, url: str, socket_timeout_s: float, options: dict[str, Any]) -> Any:
        # No retries inside the client: the worker's own loop retries with backoff, counts
        # the failures in metrics and stops consuming meanwhile.
        return aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            **options,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, socket_timeout_s: float = 5.0
    ) -> RedisReputationStore:
        """The store the settings name: single-node Redis, or a Redis Cluster."""
        common: dict[str, Any] = dict(
            prefix=settings.redis_key_prefix,
            socket_timeout_s=socket_timeout_s,
            half_life_ms=settings.half_life_ms,
            window_ms=settings.split_window_hours * 3_600_000.0,
            parcel_ttl_s=round(settings.repeat_window_days * 86_400),
            ttl_s=round(settings.entity_ttl_days * 86_400),
            address_ttl_s=round(settings.address_ttl_days * 86_400),
            exam_ttl_s=round(settings.exam_ttl_days * 86_400),
            risk_evict_below=settings.risk_evict_below,
            risk_half_life_ms=settings.risk_half_life_days * 86_400_000.0,
            risk_replica_keys=settings.risk_replica_keys,
            **redis_options(settings),
        )
        if settings.redis_cluster:
            from parcel_stream.adapters.redis_cluster import RedisClusterStore

            return RedisClusterStore(
                settings.redis_url, shards=settings.redis_shards,
                wait_replicas=settings.redis_wait_replicas,
                wait_timeout_ms=settings.redis_wait_timeout_ms, **common,
            )  # fmt: skip
        return cls(settings.redis_url, **common)

    def shipper_key(self, shipper_id: str) -> str:
        return SHIPPER.key(self.prefix, shipper_id)

    def seller_key(self, seller: str) -> str:
        return SELLER.key(self.prefix, seller)

    def address_key(self, address: str) -> str:
        return f"{self.prefix}:{ADDRESS_SHIPPERS.segment}:{address}"

    def pair_key(self, pair: str) -> str:
        return PAIR.key(self.prefix, pair)

    def watermark_key(self, part: Partition) -> str:
        return WATERMARK.key(self.prefix, f"{part[0]}:{part[1]}")

    def outbox_key(self, part: Partition) -> str:
        return OUTBOX.key(self.prefix, f"{part[0]}:{part[1]}")

    def examinable_key(self, parcel_id: str) -> str:
        return EXAMINABLE.key(self.prefix, parcel_id)

    def exam_key(self, exam_id: str) -> str:
        return EXAM.key(self.prefix, exam_id)

    def learner_key(self) -> str:
        return LEARNER.key(self.prefix)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    def parcel_key(self, parcel_id: str) -> str:
        return REMEMBERED.key(self.prefix, parcel_id)

    async def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]:
        """Remembered parcels among these ids (content hash + msgpack), one round trip."""
        if not parcel_ids:
            return {}
        rows: list[Any] = await self._parcels(
            keys=[], args=[_PACK.encode([self.prefix, parcel_ids])]
        )
        rows += [None] * (len(parcel_ids) - len(rows))
        return {p: bytes(raw) for p, raw in zip(parcel_ids, rows, strict=True) if raw is not None}

    async def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]:
        """One round trip (one script call): the batch's shippers, sellers, addresses,
        pairs, address-shipper combinations and watermarks, as stored."""
        combos = combos if combos is not None else Combos.of(keys)
        n_s, n_l, n_a, n_p = len(keys.ids), len(keys.sellers), len(keys.addresses), len(keys.pairs)
        pairs = combos.pairs()
        flat_combos = [x for a, sh in pairs for x in (a + 1, shipper_member(keys.ids[sh]))]
        payload = [self.prefix, keys.ids, keys.sellers, keys.addresses, keys.pairs, flat_combos,
                   [f"{t}:{p}" for t, p in partitions]]  # fmt: skip
        flat: list[Any] = await self._read(keys=[], args=[_PACK.encode(payload)])
        state, wm = parse_read(flat, n_s, n_l, n_a, n_p, len(pairs), len(partitions))
        marks = {
            part: int(raw) for part, raw in zip(partitions, wm, strict=True) if raw is not None
        }
        return state, marks

    async def apply(self, update: ReputationUpdate) -> bool:
        """Apply atomically; False when a watermark, a version or a remembered parcel
        moved (the caller re-reads and scores again)."""
        if update.is_empty():
            return True
        return bool(await self._apply(keys=[], args=self.apply_args(update, self.prefix)))

    def apply_args(
        self, update: ReputationUpdate, prefix: str, loose: frozenset[Partition] = frozenset()
    ) -> list[bytes]:
        """The apply script's two arguments for ``update``, its keys under ``prefix``. The
        watermarks of ``loose`` partitions only have to be below the new ones."""

        def key(kind: StateKey, ident: str) -> str:
            return kind.key(prefix, ident)

        blobs: list[bytes] = []
        size = 0

        def blob(raw: bytes) -> tuple[int, int]:
            nonlocal size
            blobs.append(raw)
            size += len(raw)
            return size - len(raw) + 1, size  # first and last byte in ARGV[2] (Lua counts)

        def spans(raws: Sequence[bytes]) -> tuple[Iterable[int], list[int]]:
            """``blob`` of each, in one pass: their first and last bytes."""
            nonlocal size
            ends = list(accumulate(map(len, raws), initial=size))
            blobs.extend(raws)
            size = ends[-1]
            return map(operator.add, ends[:-1], repeat(1)), ends[1:]

        pids, expected, raws = zip(*update.parcels, strict=True) if update.parcels else ((),) * 3

        ships, sells = entity_columns(update.shippers), entity_columns(update.sellers)
        ents = [a + b for a, b in zip(
            entity_args(SHIPPER, ships, prefix, True, blob(pack_entities(ships.vals))[0]),
            entity_args(SELLER, sells, prefix, False, blob(pack_entities(sells.vals))[0]),
            strict=True)]  # fmt: skip
        pairs = update.pairs
        members = [ids for _, ids in update.addresses]
        parcel_firsts, parcel_lasts = spans(raws)
        exam = [[pid, ref.shipper_id, ref.address, ref.seller, ",".join(ref.rules),
                 repr(ref.static_score), *(blob(encode_ref(ref.risk)) if ref.risk else (0, 0))]
                for pid, ref in update.examinable]  # fmt: skip

        # the per-item parts in columns (one list a field), u[18] = 2 saying so
        payload = [
            prefix, self.ttl_s, self.address_ttl_s, self.exam_ttl_s, float(self.window_ms),
            self.parcel_ttl_s,
            [[key(WATERMARK, f"{t}:{p}"), "" if (t, p) in loose else str(exp),
              str(new)] for (t, p), (exp, new) in update.watermarks.items()],
            ents,
            [PAIR.keys(prefix, [p.pair for p in pairs]), [p.expected_ver for p in pairs],
             [p.start_ms for p in pairs], [p.value_usd for p in pairs],
             [p.parcels for p in pairs]],
            [ADDRESS_SHIPPERS.keys(prefix, [a for a, _ in update.addresses]),
             list(map(len, members)),
             list(map(shipper_member, chain.from_iterable(members)))],
            [REMEMBERED.keys(prefix, pids), list(expected), list(parcel_firsts), parcel_lasts],
            [list(col) for col in zip(*exam, strict=True)] if exam else [[]] * 8,
            [[f"{t}:{p}", offset, *blob(digest)] for (t, p), offset, digest in update.outbox],
            [[f"{t}:{p}", offset] for (t, p), offset in update.prune.items()],
            [[key(LANES, f"{t}:{p}"), *blob(raw)] for (t, p), raw in update.lanes],
            [[key(NORMS, f"{t}:{p}"), *blob(ids.astype(">u8").tobytes()),
              *blob(rows.astype("<f8").tobytes())] for (t, p), ids, rows in update.norms],
            str(self.today()),
            2,
        ]  # fmt: skip
        return [_PACK.encode(payload), b"".join(blobs)]

    @staticmethod
    def today() -> int:
        """The UTC day number (days since 1970) on this machine's clock: an entity's TTL
        is refreshed on its first write of the day (``APPLY_LIB``'s ``write``)."""
        return int(time.time() // 86_400)

    async def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]:
        """The stored decision digests of these (partition, offset)s (one round trip)."""
        spans: dict[Partition, tuple[int, int]] = {}
        for part, off in wanted:
            lo, hi = spans.get(part, (off, off))
            spans[part] = (min(lo, off), max(hi, off))
        pipe = self.client.pipeline(transaction=False)
        for (topic, partition), (lo, hi) in spans.items():
            pipe.zrangebyscore(self.outbox_key((topic, partition)), lo, hi)
        rows: list[Any] = await pipe.execute()
        want = set(wanted)
        out = {}
        for part, members in zip(spans, rows, strict=True):
            for raw in members:
                key = (part, decode_digest(raw).offset)
                if key in want:
                    out[key] = bytes(raw)
        return out

    async def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]:
        """What was remembered of parcels that went to review or hold (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for pid in parcel_ids:
            pipe.hmget(self.examinable_key(pid), ("s", "a", "l", "r", "c", "k"))
        rows: list[Any] = await pipe.execute()
        out = {}
        for pid, (s, a, seller, rules, score, risk) in zip(parcel_ids, rows, strict=True):
            if s is None or a is None:
                continue
            codes = _text(rules) if rules else ""
            out[pid] = ParcelRef(
                _text(s),
                _text(a),
                _text(seller) if seller else "",
                tuple(codes.split(",")) if codes else (),
                float(score) if score else 0.0,
                decode_ref(risk),
            )
        return out

    async def exams_seen(self, exam_ids: list[str]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for e in exam_ids:
            pipe.exists(self.exam_key(e))
        return [bool(x) for x in await pipe.execute()]

    async def read_learner(self) -> LearnerState:
        return decode_state(await self.client.hget(self.learner_key(), "state"))

    async def learner_history(self, n: int) -> list[LearnerState]:
        raw = await self.client.lrange(self.learner_key() + LEARNER_HISTORY.suffix, 0, n - 1)
        return [decode_state(x) for x in raw]

    async def save_learner(self, expected: int, state: LearnerState) -> bool:
        """Store a learner state outside of exam results (reset); False if it moved."""
        return await self.apply_exams([], (expected, state)) is not None

    async def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None:
        """Apply each result once, keyed by exam id (one script call); True = applied now.
        With ``learner`` (expected version, new state): all or nothing, None on conflict."""
        if not deltas and learner is None:
            return []
        args: list[Any] = [self.prefix, self.exam_ttl_s, repr(float(self.half_life_ms))]
        if learner is None:
            args.extend(("", "", "", self.learner_keep))
        else:
            state = learner[1]
            args.extend((encode_state(state), str(learner[0]), str(state.version),
                         self.learner_keep))  # fmt: skip
        for d in deltas:
            args.extend((d.exam_id, d.shipper_id, d.address, int(d.violation),
                         d.examined_ts_ms, d.seller,
                         risk_spec(d, self.risk_half_life_ms)))  # fmt: skip
        res: Any = await self._exams(keys=[], args=args)
        if isinstance(res, int):
            return None if res < 0 else []
        return [bool(int(x)) for x in res]

    # -- the learned model's counts: one hash per shard (the whole store for one node) --

    def risk_hash(self, shard: int) -> str:
        return RISK.key(self.prefix)

    def risk_names(self, shard: int) -> str:
        return RISK_NAMES.key(self.prefix)

    def risk_shards(self, ids: U64) -> list[tuple[int, I64]]:
        """(shard, positions of ``ids`` in it) for every shard holding some of them."""
        return [(0, np.arange(len(ids)))] if len(ids) else []

    async def _risk_script(self, script: Any, calls: list[tuple[int, list[Any]]]) -> list[Any]:
        """One call of ``script`` per (shard, args), in one round trip (a pipeline: the
        value norms are read with a call per partition)."""
        if len(calls) <= 1:
            return [await script(keys=[], args=args) for _n, args in calls]
        pipe = self.client.pipeline(transaction=False)
        for _n, args in calls:
            await script(keys=[], args=args, client=pipe)
        return list(await pipe.execute())

    def risk_log(self, shard: int) -> str:
        return RISK_LOG.key(self.prefix)

    def risk_seq(self, shard: int) -> str:
        return RISK_SEQ.key(self.prefix)

    async def read_risk(self, ids: U64) -> F64:
        """The learned model's counts of these key ids: [n, v, t] each, NaN when the key
        has none: from the copy of each shard, brought up to date first (one call per
        shard: ``risk_replica.py``), or read from Redis (one call per shard)."""
        out = np.full((len(ids), 3), np.nan)
        where = self.risk_shards(ids)
        if self.risk_replica_keys > 0 and where:
            replicas = await self._sync_replicas([n for n, _w in where])
            direct = []
            for n, w in where:
                if replicas[n].too_big:
                    direct.append((n, w))
                else:
                    out[w] = replicas[n].lookup(ids[w])
            where = direct
        calls = [(n, [self.risk_hash(n), ids[w].astype(">u8").tobytes()]) for n, w in where]
        for (_n, w), packed in zip(where, await self._risk_script(self._risk_read, calls),
                                   strict=True):  # fmt: skip
            out[w] = risk_rows(packed, len(w))
        return out

    async def _sync_replicas(self, shards: list[int]) -> dict[int, RiskReplica]:
        """The copies of these shards, each brought to the shard's counts now (a shard
        over the size limit has none: ``too_big``, read from Redis)."""
        async with self._replica_lock:
            reps = {n: self._replicas.setdefault(n, RiskReplica()) for n in shards}
            now = time.monotonic()
            for n in shards:
                if reps[n].too_big and now >= reps[n].retry_at:
                    reps[n].too_big, reps[n].seq = False, -1  # try a load again
            shards = [n for n in shards if not reps[n].too_big]
            for _attempt in range(5):
                calls = [(n, [self.risk_hash(n), self.risk_log(n), self.risk_seq(n),
                              str(reps[n].seq)]) for n in shards]  # fmt: skip
                again = []
                for n, reply in zip(shards, await self._risk_script(self._risk_sync, calls),
                                    strict=True):  # fmt: skip
                    seq = int(reply[0])
                    if len(reply) == 3:
                        reps[n].apply(unpack_ids(reply[1]), unpack_rows(reply[2]), seq)
                        if len(reps[n]) > self.risk_replica_keys:
                            self._drop_replica(n, reps[n])
                    elif len(reply) == 2:  # load it whole, then the changes since
                        if await self._load_replica(n, reps[n], seq):
                            again.append(n)
                    else:
                        reps[n].seq = max(reps[n].seq, seq)
                if not again:
                    return reps
                shards = again
            raise RuntimeError("the learned counts changed under every load of their copy")

    async def _load_replica(self, shard: int, rep: RiskReplica, seq: int) -> bool:
        """Scan a shard's counts into its copy as of change ``seq`` (the changes during
        the scan are applied next, from the log); False when the shard is over the size
        limit: it then has no copy for ten minutes."""
        fields: list[bytes] = []
        values: list[bytes] = []
        async for field, value in self.client.hscan_iter(self.risk_hash(shard), count=5000):
            fields.append(field)
            values.append(value)
            if len(fields) > self.risk_replica_keys:
                self._drop_replica(shard, rep)
                return False
        rep.load(unpack_ids(b"".join(fields)), unpack_rows(b"".join(values)), seq)
        return True

    def _drop_replica(self, shard: int, rep: RiskReplica) -> None:
        """A shard over the size limit: no copy (read from Redis) for ten minutes."""
        log.warning(
            "learned counts: shard %d has over %d keys (PARCEL_RISK_REPLICA_KEYS): "
            "read from Redis each batch",
            shard,
            self.risk_replica_keys,
        )
        rep.load(np.zeros(0, dtype=np.uint64), np.zeros((0, 3)), -1)
        rep.too_big, rep.retry_at = True, time.monotonic() + 600.0

    async def write_risk(self, rows: dict[int, list[float]], names: dict[int, str]) -> None:
        """Store learned keys' counts as they are (a warm start: ``parcel-stream learn``),
        with the names of those with at least 5 examinations; 5,000 keys a call, each
        logged as a change."""
        ids = np.fromiter(rows, np.uint64, len(rows))
        for n, w in self.risk_shards(ids):
            items = [(int(k), rows[int(k)]) for k in ids[w]]
            for lo in range(0, len(items), 5000):
                chunk = items[lo : lo + 5000]
                named = [x for k, r in chunk if r[0] >= 5 and k in names
                         for x in (k.to_bytes(8, "big"), names[k])]  # fmt: skip
                args = [self.risk_hash(n), self.risk_names(n), self.risk_log(n),
                        self.risk_seq(n), b"".join(k.to_bytes(8, "big") for k, _r in chunk),
                        b"".join(struct.pack("<ddd", *r) for _k, r in chunk), *named]  # fmt: skip
                await self._risk_script(self._risk_write, [(n, args)])

    async def prune_risk(self, now_ms: float, count: int = 5000) -> int:
        """Drop the learned keys whose decayed examinations are under
        ``risk_evict_below``: a full pass over every shard; returns the keys dropped."""
        dropped = 0
        for n in range(self.risk_shard_count()):
            cursor: Any = "0"
            while True:
                floor, hl = repr(self.risk_evict_below), repr(float(self.risk_half_life_ms))
                args = [self.risk_hash(n), self.risk_names(n), floor, repr(float(now_ms)), hl,
                        count, cursor, self.risk_log(n), self.risk_seq(n)]  # fmt: skip
                (reply,) = await self._risk_script(self._risk_prune, [(n, args)])
                cursor, gone = reply
                dropped += int(gone)
                if _text(cursor) == "0":
                    break
        return dropped

    def risk_shard_count(self) -> int:
        return 1

    async def risk_size(self) -> int:
        """How many learned keys are stored."""
        return sum([int(await self.client.hlen(self.risk_hash(n)))
                    for n in range(self.risk_shard_count())])  # fmt: skip

    async def clear_risk(self) -> None:
        """Delete every learned key's counts and name (``learn --replace``)."""
        for n in range(self.risk_shard_count()):
            await self._risk_script(
                self._risk_clear,
                [(n, [self.risk_hash(n), self.risk_names(n), self.risk_log(n), self.risk_seq(n)])],
            )

    async def scan_risk(
        self, limit: int = 1_000_000
    ) -> tuple[dict[int, list[float]], dict[int, str]]:
        """Every learned key's counts, and the names kept (up to ``limit`` keys)."""
        rows: dict[int, list[float]] = {}
        names: dict[int, str] = {}
        for n in range(self.risk_shard_count()):
            async for field, value in self.client.hscan_iter(self.risk_hash(n), count=5000):
                rows[int.from_bytes(field, "big")] = list(struct.unpack("<ddd", value))
                if len(rows) >= limit:
                    break
            async for field, name in self.client.hscan_iter(self.risk_names(n), count=5000):
                names[int.from_bytes(field, "big")] = _text(name)
        return rows, names

    def norms_key(self, part: Partition) -> tuple[int, str]:
        """(shard, key) of a partition's value norms."""
        return 0, NORMS.key(self.prefix, f"{part[0]}:{part[1]}")

    async def read_norms(self, wanted: dict[Partition, U64]) -> dict[Partition, F64]:
        """The value norms of these HS key ids in each partition: [weight, mean, M2, t]
        per id, NaN when none (one call per partition)."""
        parts = [p for p, ids in wanted.items() if len(ids)]
        calls = [(self.norms_key(p)[0], [self.norms_key(p)[1], wanted[p].astype(">u8").tobytes(),
                                         4]) for p in parts]  # fmt: skip
        out = {p: np.zeros((0, 4)) for p in wanted}
        for p, packed in zip(parts, await self._risk_script(self._risk_read, calls), strict=True):
            out[p] = np.frombuffer(packed, dtype="<f8").reshape(len(wanted[p]), 4).copy()
        return out

    def lanes_key(self, part: Partition) -> str:
        return LANES.key(self.prefix, f"{part[0]}:{part[1]}")

    async def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]:
        """The learned model's capacity thresholds of these partitions."""
        if not partitions:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for part in partitions:
            pipe.get(self.lanes_key(part))
        rows = await pipe.execute()
        return {p: bytes(r) for p, r in zip(partitions, rows, strict=True) if r is not None}

    async def _entity(self, key: str) -> ShipperState | None:
        raw = await self.client.hgetall(key)
        if not raw:
            return None
        packed = joined_parts([raw.pop(name.encode(), None) for name in PACKED_PARTS])
        get = {_text(k): _text(v) for k, v in raw.items()}
        if packed is not None:  # else one field per value, as earlier versions kept them
            vals = map(num_text, unpack_entities([packed], 1)[0].tolist())
            get.update(zip(ENTITY_FIELDS, vals, strict=True))
        return ShipperState(
            seen=int(get.get("seen", 0)),
            value_usd=float(get.get("value_usd", 0)),
            holds=int(get.get("holds", 0)),
            first_seen_ms=int(get.get("first_seen_ms", 0)),
            last_seen_ms=int(get.get("last_seen_ms", 0)),
            days=decode_days(int(get.get("dn", 0)), get.get("dd")),
            exams=int(get.get("exams", 0)),
            violations=int(get.get("violations", 0)),
            recent_t_ms=float(get.get("t", 0)),
            recent_seen=float(get.get("rs", 0)),
            recent_holds=float(get.get("rh", 0)),
            recent_exams=float(get.get("re", 0)),
            recent_violations=float(get.get("rv", 0)),
            ver=int(get.get("v", 0)),
            newest_day=int(get.get("dn", 0)),
        )

    async def shipper(self, shipper_id: str) -> ShipperState | None:
        return await self._entity(self.shipper_key(shipper_id))

    async def seller(self, seller: str) -> ShipperState | None:
        return await self._entity(self.seller_key(seller))

    async def address_state(self, address: str, now_ms: float) -> tuple[int, float]:
        """A consignee address's shippers seen sending to it, and the recent-weighted
        violations found there as of ``now_ms`` (decayed, nothing added)."""
        from parcel_stream.reputation import decay_add

        base = self.address_key(address)
        shippers = int(await self.client.scard(base + ADDRESS_SHIPPERS.suffix))
        raw = await self.client.hgetall(base + ADDRESS_VIOLATIONS.suffix)
        got = {_text(k): _text(v) for k, v in raw.items()}
        t, rv = float(got.get("t", 0)), float(got.get("rv", 0))
        _t, (recent,) = decay_add(t, (rv,), max(now_ms, t), (0.0,), self.half_life_ms)
        return shippers, recent

    async def ttl(self, key: str) -> int:
        return int(await self.client.ttl(key))

    async def close(self) -> None:
        await self.client.aclose()


class BlockingRedisStore:
    """The Redis store behind a synchronous interface (backtests, tools): runs the async
    store on a private event loop."""

    def __init__(
        self, url: str, prefix: str = "ps", half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        store: RedisReputationStore | None = None,
    ) -> None:  # fmt: skip
        import asyncio

        self._loop = asyncio.new_event_loop()
        if store is None:
            store = RedisReputationStore(url, prefix=prefix, half_life_ms=half_life_ms)
        self._store = store

    def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]:
        return self._loop.run_until_complete(self._store.read_parcels(parcel_ids))

    def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]:
        return self._loop.run_until_complete(self._store.read_outbox(wanted))

    def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]:
        return self._loop.run_until_complete(self._store.read(keys, partitions, combos))

    def apply(self, update: ReputationUpdate) -> bool:
        return self._loop.run_until_complete(self._store.apply(update))

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]:
        return self._loop.run_until_complete(self._store.lookup_parcels(parcel_ids))

    def exams_seen(self, exam_ids: list[str]) -> list[bool]:
        return self._loop.run_until_complete(self._store.exams_seen(exam_ids))

    def read_learner(self) -> LearnerState:
        return self._loop.run_until_complete(self._store.read_learner())

    def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None:
        return self._loop.run_until_complete(self._store.apply_exams(deltas, learner))

    def read_risk(self, ids: U64) -> F64:
        return self._loop.run_until_complete(self._store.read_risk(ids))

    def prune_risk(self, now_ms: float) -> int:
        return self._loop.run_until_complete(self._store.prune_risk(now_ms))

    def write_risk(self, rows: dict[int, list[float]], names: dict[int, str]) -> None:
        self._loop.run_until_complete(self._store.write_risk(rows, names))

    def clear_risk(self) -> None:
        self._loop.run_until_complete(self._store.clear_risk())

    def read_norms(self, wanted: dict[Partition, U64]) -> dict[Partition, F64]:
        return self._loop.run_until_complete(self._store.read_norms(wanted))

    def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]:
        return self._loop.run_until_complete(self._store.read_lanes(partitions))

    def close(self) -> None:
        self._loop.run_until_complete(self._store.close())
        self._loop.close()
