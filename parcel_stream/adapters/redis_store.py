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

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from parcel_stream.adapters.security import redis_options
from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState, decode_state, encode_state
from parcel_stream.outbox import decode_digest
from parcel_stream.reputation import (
    DEFAULT_HALF_LIFE_MS,
    ExamDelta,
    ParcelRef,
    Partition,
    ReputationUpdate,
    ShipperState,
)
from parcel_stream.sequence import DAY_SLOTS, ENTITY_FIELDS, EntityTable, StoredState
from parcel_stream.settings import Settings
from parcel_stream.state import (
    ADDRESS_SHIPPERS,
    ADDRESS_VIOLATIONS,
    EXAM,
    EXAMINABLE,
    LEARNER,
    LEARNER_HISTORY,
    LOCKS,
    OUTBOX,
    PAIR,
    PREPDATA,
    REMEMBERED,
    SELLER,
    SHIPPER,
    WATERMARK,
    StateKey,
)

F64 = npt.NDArray[np.float64]

# Decayed counters ("recent" counts): fields t (reference ms) and the values named in
# the call, brought up to date as reputation.decay_add does. Numbers are written with 17
# significant digits so that they read back bit for bit.
_DECAY_LUA = """
local function num(x) return string.format('%.17g', x) end
local function decay_add(key, at, hl, fields, deltas)
  local row = redis.call('HMGET', key, 't', unpack(fields))
  local t = tonumber(row[1]) or 0
  if t <= 0 then t = at end
  local out = {}
  if at >= t then
    local f = 2 ^ (-(at - t) / hl)
    out[1], out[2] = 't', num(at)
    for i = 1, #fields do
      out[#out + 1] = fields[i]
      out[#out + 1] = num((tonumber(row[i + 1]) or 0) * f + deltas[i])
    end
  else
    local g = 2 ^ (-(t - at) / hl)
    out[1], out[2] = 't', num(t)
    for i = 1, #fields do
      out[#out + 1] = fields[i]
      out[#out + 1] = num((tonumber(row[i + 1]) or 0) + deltas[i] * g)
    end
  end
  redis.call('HSET', key, unpack(out))
end
"""

# One command reads everything a batch needs (one msgpack argument in, one reply array
# out, so no per-key argument encoding): per shipper the entity fields, its version, its
# newest day and day counts (``dd``: 16 counts up to that day); per seller the entity
# fields and version; per address the distinct shippers stored and its recent violations;
# per pair the open window and its version; per (address, shipper) combination whether it
# is stored; the watermarks.
_ENTITY = (
    "'seen', 'value_usd', 'holds', 'first_seen_ms', 'last_seen_ms', 't', 'rs', 'rh', 're', 'rv'"
)
_SHIPPER_FIELDS = 13
_SELLER_FIELDS = 11
_READ_LUA = f"""
local u = cmsgpack.unpack(ARGV[1])
local prefix, shippers, sellers, addresses, pairs_, combos, marks =
  u[1], u[2], u[3], u[4], u[5], u[6], u[7]
local out = {{}}
local n = 0
for _, id in ipairs(shippers) do
  local row = redis.call('HMGET', prefix .. '@shipper:' .. id, {_ENTITY}, 'v', 'dn', 'dd')
  for j = 1, {_SHIPPER_FIELDS} do n = n + 1; out[n] = row[j] end
end
for _, id in ipairs(sellers) do
  local row = redis.call('HMGET', prefix .. '@seller:' .. id, {_ENTITY}, 'v')
  for j = 1, {_SELLER_FIELDS} do n = n + 1; out[n] = row[j] end
end
for _, id in ipairs(addresses) do
  local key = prefix .. '@addr:' .. id
  n = n + 1; out[n] = redis.call('SCARD', key .. '@addr_shippers')
  local v = redis.call('HMGET', key .. '@addr_violations', 't', 'rv')
  n = n + 1; out[n] = v[1]
  n = n + 1; out[n] = v[2]
end
for _, id in ipairs(pairs_) do
  local row = redis.call('HMGET', prefix .. '@pair:' .. id, 'start_ms', 'value_usd', 'parcels', 'v')
  for j = 1, 4 do n = n + 1; out[n] = row[j] end
end
for c = 1, #combos, 2 do
  n = n + 1
  out[n] = redis.call('SISMEMBER', prefix .. '@addr:' .. addresses[combos[c]] .. '@addr_shippers',
    combos[c + 1])
end
for _, part in ipairs(marks) do
  n = n + 1; out[n] = redis.call('GET', prefix .. '@wm:' .. part)
end
return out
"""

# Remembered parcels of a batch (one msgpack list of parcel ids in).
_PARCELS_LUA = """
local u = cmsgpack.unpack(ARGV[1])
local out = {}
for i, id in ipairs(u[2]) do out[i] = redis.call('GET', u[1] .. '@pid:' .. id) end
return out
"""

# Examination results: each applied once (SET NX on the exam id), then counted on the
# shipper, the seller and the consignee address. With a learner state (ARGV[4] not
# empty) the call is all or nothing: it fails (returns -1) unless the learner version is
# still ARGV[5] and none of the results was applied meanwhile, so that the weights learn
# from each result exactly once.
_EXAMS_LUA = (
    _DECAY_LUA
    + """
local prefix, ttl, hl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local learner, expected = ARGV[4], ARGV[5]
local first = 8
if learner ~= '' then
  local cur = redis.call('HGET', prefix .. '@learner', 'version') or '0'
  if cur ~= expected then return -1 end
  for a = first, #ARGV, 6 do
    if redis.call('EXISTS', prefix .. '@exam:' .. ARGV[a]) == 1 then return -1 end
  end
end
local out = {}
for a = first, #ARGV, 6 do
  local fresh = redis.call('SET', prefix .. '@exam:' .. ARGV[a], '1', 'NX', 'EX', ttl)
  if fresh then
    local v = tonumber(ARGV[a + 3])
    local at = tonumber(ARGV[a + 4])
    local entities = {prefix .. '@shipper:' .. ARGV[a + 1]}
    if ARGV[a + 5] ~= '' then entities[2] = prefix .. '@seller:' .. ARGV[a + 5] end
    for _, key in ipairs(entities) do
      redis.call('HINCRBY', key, 'v', 1)
      redis.call('HINCRBY', key, 'exams', 1)
      redis.call('HINCRBY', key, 'violations', v)
      decay_add(key, at, hl, {'rs', 'rh', 're', 'rv'}, {0, 0, 1, v})
    end
    if v == 1 then
      local akey = prefix .. '@addr:' .. ARGV[a + 2] .. '@addr_violations'
      decay_add(akey, at, hl, {'rv'}, {1})
      redis.call('EXPIRE', akey, ttl)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if learner ~= '' then
  local lkey = prefix .. '@learner'
  redis.call('DEL', lkey)
  redis.call('HSET', lkey, 'version', ARGV[6], 'state', learner)
  redis.call('LPUSH', lkey .. '@learner_history', learner)
  redis.call('LTRIM', lkey .. '@learner_history', 0, tonumber(ARGV[7]) - 1)
end
return out
"""
)

# A batch's update (ARGV[1] msgpack, see ``apply``; the binary values are concatenated in
# ARGV[2], named by first and last byte, since Redis' cmsgpack has no bin type). ``check``
# is true only while every watermark, entity and pair version and remembered parcel is
# still what the batch read (a watermark expected as '' only has to be below the new
# one: a cluster shard other than the partition's home); ``write`` writes the batch's
# resulting state. The single-node script does both in one call; the cluster store
# (``redis_cluster.py``) prepares and commits them per shard.
_APPLY_LIB = """
local num = function(x) return string.format('%.17g', x) end
local function check(u)
  for _, w in ipairs(u[7]) do
    local cur = redis.call('GET', w[1]) or '-1'
    if w[2] == '' then
      if tonumber(cur) >= tonumber(w[3]) then return false end
    elseif cur ~= w[2] then return false end
  end
  for _, e in ipairs(u[8]) do
    if (tonumber(redis.call('HGET', e[1], 'v')) or 0) ~= e[2] then return false end
  end
  for _, p in ipairs(u[9]) do
    if (tonumber(redis.call('HGET', p[1], 'v')) or 0) ~= p[2] then return false end
  end
  for _, p in ipairs(u[11]) do
    local have = redis.call('GET', p[1])
    if have then have = string.sub(have, 1, 16) else have = '' end
    if have ~= p[2] then return false end
  end
  return true
end
local function write(u, blobs)
  local prefix, ttl, addr_ttl, exam_ttl, window_ms, parcel_ttl =
    u[1], u[2], u[3], u[4], u[5], u[6]
  local wm, ents, pairs_, members, parcels, exam, outbox, prune =
    u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14]
  local fields = {ENTITY_FIELDS}
  for _, e in ipairs(ents) do
    local key, vals = e[1], e[3]
    local row = {'v', e[2] + 1}
    for j = 1, #fields do
      row[#row + 1] = fields[j]
      row[#row + 1] = num(vals[j])
    end
    if e[4] > 0 then
      row[#row + 1] = 'dn'
      row[#row + 1] = e[4]
      row[#row + 1] = 'dd'
      row[#row + 1] = e[5]
    end
    redis.call('HSET', key, unpack(row))
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  end
  for _, p in ipairs(pairs_) do
    redis.call('HSET', p[1], 'start_ms', num(p[3]), 'value_usd', num(p[4]), 'parcels', num(p[5]),
      'v', p[2] + 1)
    redis.call('PEXPIRE', p[1], math.floor(window_ms * 2))
  end
  for _, m in ipairs(members) do
    for j = 1, #m[2], 500 do
      redis.call('SADD', m[1], unpack(m[2], j, math.min(j + 499, #m[2])))
    end
    if addr_ttl > 0 then redis.call('EXPIRE', m[1], addr_ttl) end
  end
  for _, p in ipairs(parcels) do
    redis.call('SET', p[1], string.sub(blobs, p[3], p[4]), 'EX', parcel_ttl)
  end
  for _, x in ipairs(exam) do
    local key = prefix .. '@parcel:' .. x[1]
    redis.call('HSET', key, 's', x[2], 'a', x[3], 'l', x[4], 'r', x[5], 'c', x[6])
    redis.call('EXPIRE', key, exam_ttl)
  end
  -- decision digests of this batch's records, and those of outputs since acknowledged
  for _, o in ipairs(outbox) do
    local key = prefix .. '@ob:' .. o[1]
    redis.call('ZADD', key, o[2], string.sub(blobs, o[3], o[4]))
    redis.call('EXPIRE', key, 7 * 86400)
  end
  for _, o in ipairs(prune) do
    redis.call('ZREMRANGEBYSCORE', prefix .. '@ob:' .. o[1], '-inf', o[2])
  end
  for _, w in ipairs(wm) do redis.call('SET', w[1], w[3]) end
end
""".replace("{ENTITY_FIELDS}", "{" + ", ".join(f"'{f}'" for f in ENTITY_FIELDS) + "}")

# Single node: check and write in one call (0: refused, nothing written).
_APPLY_LUA = (
    _APPLY_LIB
    + """
local u = cmsgpack.unpack(ARGV[1])
if not check(u) then return 0 end
write(u, ARGV[2])
return 1
"""
)


_PACK = msgspec.msgpack.Encoder()

# The scripts name keys by their kind (``'@shipper:'``, ``'@addr_shippers'``): filled in
# from the declaration in ``state.py``, the one place the key scheme is written.
_LUA_KEYS = {
    "@shipper:": f":{SHIPPER.segment}:",
    "@seller:": f":{SELLER.segment}:",
    "@addr:": f":{ADDRESS_SHIPPERS.segment}:",
    "@addr_shippers": ADDRESS_SHIPPERS.suffix,
    "@addr_violations": ADDRESS_VIOLATIONS.suffix,
    "@pair:": f":{PAIR.segment}:",
    "@pid:": f":{REMEMBERED.segment}:",
    "@parcel:": f":{EXAMINABLE.segment}:",
    "@exam:": f":{EXAM.segment}:",
    "@learner_history": LEARNER_HISTORY.suffix,
    "@learner": f":{LEARNER.segment}",
    "@wm:": f":{WATERMARK.segment}:",
    "@locks": f":{LOCKS.segment}",
    "@prepdata:": f":{PREPDATA.segment}:",
    "@ob:": f":{OUTBOX.segment}:",
}


def _keys_in(script: str) -> str:
    for token, text in _LUA_KEYS.items():
        script = script.replace(token, text)
    if "'@" in script:
        raise ValueError("a key kind in a Lua script is not declared in state.py")
    return script


@lru_cache(maxsize=1 << 16)
def shipper_member(shipper_id: str) -> str:
    """A shipper as a member of an address's set: a 60-bit integer from a hash of its id,
    so that Redis keeps small sets as compact integer sets (about 8 bytes a member)."""
    digest = hashlib.blake2b(shipper_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big") >> 4)


def _col(values: list[Any]) -> F64:
    return np.array([float(v) if v is not None else 0.0 for v in values], dtype=np.float64)


def _fill_entities(table: EntityTable, flat: list[Any], width: int, days: bool) -> None:
    """Entity rows from the read script's reply (``width`` values per entity)."""
    n = len(table.ver)
    if not n:
        return
    rows = [flat[j * width : (j + 1) * width] for j in range(n)]
    nf = len(ENTITY_FIELDS)
    table.vals[:] = _col([v for r in rows for v in r[:nf]]).reshape(n, nf)
    table.ver[:] = [int(r[nf]) if r[nf] is not None else 0 for r in rows]
    if days:
        for j, r in enumerate(rows):
            newest = int(r[nf + 1]) if r[nf + 1] is not None else 0
            if newest:
                table.set_days(j, newest, decode_days(newest, r[nf + 2]))


def parse_read(
    flat: list[Any], n_s: int, n_l: int, n_a: int, n_p: int, n_c: int, n_w: int
) -> tuple[StoredState, list[Any]]:
    """The read script's reply as the batch's stored state, and the raw watermarks."""
    sizes = (_SHIPPER_FIELDS * n_s, _SELLER_FIELDS * n_l, 3 * n_a, 4 * n_p, n_c, n_w)
    flat = flat + [None] * (sum(sizes) - len(flat))
    parts, at = [], 0
    for size in sizes:
        parts.append(flat[at : at + size])
        at += size
    sh, sl, addr, pr, member, wm = parts
    state = StoredState.empty(n_s, n_l, n_a, n_p, n_c)
    _fill_entities(state.shippers, sh, _SHIPPER_FIELDS, days=True)
    _fill_entities(state.sellers, sl, _SELLER_FIELDS, days=False)
    state.address_count[:] = _col(addr[0::3])
    state.address_t[:] = _col(addr[1::3])
    state.address_rv[:] = _col(addr[2::3])
    if n_p:
        state.pairs[:] = _col(pr).reshape(n_p, 4)[:, :3]
        state.pair_ver[:] = _col(pr[3::4]).astype(np.int64)
    state.member[:] = [bool(x) for x in member]
    return state, wm


def encode_days(newest: int, days: tuple[tuple[int, int], ...]) -> str:
    """A shipper's day counts as one field: the counts of the ``DAY_SLOTS`` days up to
    ``newest``, comma-separated (older days are gone)."""
    counts = dict(days)
    return ",".join(str(counts.get(d, 0)) for d in range(newest - DAY_SLOTS + 1, newest + 1))


def decode_days(newest: int, raw: bytes | str | None) -> dict[int, int]:
    if not raw:
        return {}
    counts = _text(raw).split(",")
    first = newest - len(counts) + 1
    return {first + k: int(c) for k, c in enumerate(counts) if c != "0"}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
        **client_options: Any,
    ) -> None:
        self.parcel_ttl_s = parcel_ttl_s
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
        self._apply = self.client.register_script(_keys_in(_APPLY_LUA))
        self._read = self.client.register_script(_keys_in(_READ_LUA))
        self._exams = self.client.register_script(_keys_in(_EXAMS_LUA))
        self._parcels = self.client.register_script(_keys_in(_PARCELS_LUA))

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

        ents = [
            [key(SHIPPER, w.entity_id), w.expected_ver, list(w.vals), w.newest_day,
             encode_days(w.newest_day, w.days)]
            for w in update.shippers
        ] + [
            [key(SELLER, w.entity_id), w.expected_ver, list(w.vals), 0, ""]
            for w in update.sellers
        ]  # fmt: skip
        blobs: list[bytes] = []
        size = 0

        def blob(raw: bytes) -> tuple[int, int]:
            nonlocal size
            blobs.append(raw)
            size += len(raw)
            return size - len(raw) + 1, size  # first and last byte in ARGV[2] (Lua counts)

        payload = [
            prefix, self.ttl_s, self.address_ttl_s, self.exam_ttl_s, float(self.window_ms),
            self.parcel_ttl_s,
            [[key(WATERMARK, f"{t}:{p}"), "" if (t, p) in loose else str(exp),
              str(new)] for (t, p), (exp, new) in update.watermarks.items()],
            ents,
            [[key(PAIR, p.pair), p.expected_ver, p.start_ms, p.value_usd, p.parcels]
             for p in update.pairs],
            [[ADDRESS_SHIPPERS.key(prefix, a), [shipper_member(x) for x in ids]]
             for a, ids in update.addresses],
            [[key(REMEMBERED, pid), expected, *blob(raw)] for pid, expected, raw in update.parcels],
            [[pid, ref.shipper_id, ref.address, ref.seller, ",".join(ref.rules),
              repr(ref.static_score)] for pid, ref in update.examinable],
            [[f"{t}:{p}", offset, *blob(digest)] for (t, p), offset, digest in update.outbox],
            [[f"{t}:{p}", offset] for (t, p), offset in update.prune.items()],
        ]  # fmt: skip
        return [_PACK.encode(payload), b"".join(blobs)]

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
            pipe.hmget(self.examinable_key(pid), ("s", "a", "l", "r", "c"))
        rows: list[Any] = await pipe.execute()
        out = {}
        for pid, (s, a, seller, rules, score) in zip(parcel_ids, rows, strict=True):
            if s is None or a is None:
                continue
            codes = _text(rules) if rules else ""
            out[pid] = ParcelRef(
                _text(s),
                _text(a),
                _text(seller) if seller else "",
                tuple(codes.split(",")) if codes else (),
                float(score) if score else 0.0,
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
                         d.examined_ts_ms, d.seller))  # fmt: skip
        res: Any = await self._exams(keys=[], args=args)
        if isinstance(res, int):
            return None if res < 0 else []
        return [bool(int(x)) for x in res]

    async def _entity(self, key: str) -> ShipperState | None:
        raw = await self.client.hgetall(key)
        if not raw:
            return None
        get = {_text(k): _text(v) for k, v in raw.items()}
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

    def close(self) -> None:
        self._loop.run_until_complete(self._store.close())
        self._loop.close()
