"""Shipper reputation in Redis: one pipelined read and one atomic script call per batch.

Key layout (prefix from ``PARCEL_REDIS_KEY_PREFIX``, default ``ps``):

- ``ps:shipper:{id}`` hash: lifetime ``seen``, ``value_usd``, ``holds``, ``exams``,
  ``violations``, ``first_seen_ms``, ``last_seen_ms``; ``d{day}`` parcel counts of the
  last 8 (manifest-time) days; recent-weighted ``rs``, ``rh``, ``re``, ``rv`` (parcels,
  holds, exams, violations) as of ``t`` (ms), halved every half-life; expires ``ttl_s``
  after its last update (bounded memory).
- ``ps:seller:{seller id}@{marketplace}`` hash: the same for marketplace sellers, no days.
- ``ps:addr:{address key}`` HyperLogLog of the shipper ids seen sending to a consignee
  address (the key is a hash of the normalised address); expires 30 days after its last
  update. ``ps:addr:{address key}:violations`` hash: recent-weighted ``rv`` at ``t``.
- ``ps:pair:{address key}:{shipper id}`` hash: ``start_ms``, ``value_usd``, ``parcels`` of
  the open split-shipment window (72 h by default, by manifest time).
- ``ps:parcel:{parcel id}`` hash: shipper id (``s``), address key (``a``), seller (``l``),
  fired rules (``r``) and rule-set score (``c``) of a parcel sent to review or hold, so
  an examination result can be traced and learned from (180 days).
- ``ps:exam:{exam id}`` marks an applied examination result (duplicates are ignored).
- ``ps:learner`` hash (``version``, JSON ``state``) and ``ps:learner:history`` list: the
  adaptive weights and their last versions.
- ``ps:wm:{topic}:{partition}`` string: the last input offset applied from that partition.
- ``ps:ob:{topic}:{partition}`` sorted set (score = offset): decision digests of applied
  records whose outputs are not yet acknowledged (``outbox.py``); about one batch.

The update script applies a batch only if the watermarks it was computed against are
still current (compare-and-set), so a redelivered batch changes nothing twice. All keys of
one call must live on one node; for Redis Cluster use a prefix with a hash tag.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from parcel_stream.adapters.security import redis_options
from parcel_stream.features import ReputationView, ShipperIndex
from parcel_stream.learner import LearnerState, decode_state, encode_state
from parcel_stream.outbox import decode_digest
from parcel_stream.reputation import (
    DEFAULT_HALF_LIFE_MS,
    ExamDelta,
    ParcelRef,
    Partition,
    ReputationUpdate,
    ShipperState,
    decay_factor,
)
from parcel_stream.settings import Settings

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

# One command reads everything a batch needs (one reply array, no per-key command
# overhead): 17 fields per shipper (4 lifetime + 8 day counts + the decayed t, rs, rh,
# re, rv), 6 per seller, 3 per address (distinct shippers, violations t and rv), 3 per
# pair, then the watermarks.
_SHIPPER_FIELDS = 17
_SELLER_FIELDS = 6
_READ_LUA = """
local n_sh, n_sel, n_addr, n_pair = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local today = tonumber(ARGV[5])
local out = {}
local k = 0
for i = 1, n_sh do
  local row = redis.call('HMGET', KEYS[k + i], 'seen', 'holds', 'value_usd', 'first_seen_ms',
    'd' .. today, 'd' .. (today - 1), 'd' .. (today - 2), 'd' .. (today - 3),
    'd' .. (today - 4), 'd' .. (today - 5), 'd' .. (today - 6), 'd' .. (today - 7),
    't', 'rs', 'rh', 're', 'rv')
  for j = 1, 17 do out[#out + 1] = row[j] end
end
k = k + n_sh
for i = 1, n_sel do
  local row = redis.call('HMGET', KEYS[k + i], 'seen', 't', 'rs', 'rh', 're', 'rv')
  for j = 1, 6 do out[#out + 1] = row[j] end
end
k = k + n_sel
for i = 1, n_addr do
  out[#out + 1] = redis.call('PFCOUNT', KEYS[k + i])
  local v = redis.call('HMGET', KEYS[k + i] .. ':violations', 't', 'rv')
  out[#out + 1] = v[1]
  out[#out + 1] = v[2]
end
k = k + n_addr
for i = 1, n_pair do
  local row = redis.call('HMGET', KEYS[k + i], 'start_ms', 'value_usd', 'parcels')
  for j = 1, 3 do out[#out + 1] = row[j] end
end
k = k + n_pair
for i = k + 1, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) end
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
  local cur = redis.call('HGET', prefix .. ':learner', 'version') or '0'
  if cur ~= expected then return -1 end
  for a = first, #ARGV, 6 do
    if redis.call('EXISTS', prefix .. ':exam:' .. ARGV[a]) == 1 then return -1 end
  end
end
local out = {}
for a = first, #ARGV, 6 do
  local fresh = redis.call('SET', prefix .. ':exam:' .. ARGV[a], '1', 'NX', 'EX', ttl)
  if fresh then
    local v = tonumber(ARGV[a + 3])
    local at = tonumber(ARGV[a + 4])
    local entities = {prefix .. ':shipper:' .. ARGV[a + 1]}
    if ARGV[a + 5] ~= '' then entities[2] = prefix .. ':seller:' .. ARGV[a + 5] end
    for _, key in ipairs(entities) do
      redis.call('HINCRBY', key, 'exams', 1)
      redis.call('HINCRBY', key, 'violations', v)
      decay_add(key, at, hl, {'rs', 'rh', 're', 'rv'}, {0, 0, 1, v})
    end
    if v == 1 then
      local akey = prefix .. ':addr:' .. ARGV[a + 2] .. ':violations'
      decay_add(akey, at, hl, {'rv'}, {1})
      redis.call('EXPIRE', akey, ttl)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if learner ~= '' then
  local lkey = prefix .. ':learner'
  redis.call('DEL', lkey)
  redis.call('HSET', lkey, 'version', ARGV[6], 'state', learner)
  redis.call('LPUSH', lkey .. ':history', learner)
  redis.call('LTRIM', lkey .. ':history', 0, tonumber(ARGV[7]) - 1)
end
return out
"""
)

_APPLY_LUA = (
    _DECAY_LUA
    + """
local n_wm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_sh, n_addr, n_pair = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window_ms, addr_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local n_exam, prefix, exam_ttl = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local hl = tonumber(ARGV[11])
local a = 12
for i = 1, n_wm do
  local cur = redis.call('GET', KEYS[i]) or '-1'
  if cur ~= ARGV[a + 2 * (i - 1)] then return 0 end
end
a = a + 2 * n_wm
local k = n_wm
-- shippers, then sellers: the same fields (sellers have no day counts)
for i = 1, n_sh do
  local key = KEYS[k + i]
  redis.call('HINCRBY', key, 'seen', ARGV[a])
  redis.call('HINCRBYFLOAT', key, 'value_usd', ARGV[a + 1])
  redis.call('HINCRBY', key, 'holds', ARGV[a + 2])
  local first = redis.call('HGET', key, 'first_seen_ms')
  if (not first) or tonumber(first) > tonumber(ARGV[a + 3]) then
    redis.call('HSET', key, 'first_seen_ms', ARGV[a + 3])
  end
  local last = redis.call('HGET', key, 'last_seen_ms')
  if (not last) or tonumber(last) < tonumber(ARGV[a + 4]) then
    redis.call('HSET', key, 'last_seen_ms', ARGV[a + 4])
  end
  decay_add(key, tonumber(ARGV[a + 4]), hl, {'rs', 'rh', 're', 'rv'},
    {tonumber(ARGV[a]), tonumber(ARGV[a + 2]), 0, 0})
  local n_days = tonumber(ARGV[a + 5])
  local newest = 0
  for d = 1, n_days do
    local day = tonumber(ARGV[a + 4 + 2 * d])
    redis.call('HINCRBY', key, 'd' .. day, ARGV[a + 5 + 2 * d])
    if day > newest then newest = day end
  end
  if n_days > 0 then
    redis.call('HDEL', key, 'd' .. (newest - 8), 'd' .. (newest - 9), 'd' .. (newest - 10))
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  a = a + 6 + 2 * n_days
end
k = k + n_sh
for i = 1, n_addr do
  local key = KEYS[k + i]
  local count = tonumber(ARGV[a])
  for j = a + 1, a + count, 500 do
    redis.call('PFADD', key, unpack(ARGV, j, math.min(j + 499, a + count)))
  end
  if addr_ttl > 0 then redis.call('EXPIRE', key, addr_ttl) end
  a = a + 1 + count
end
k = k + n_addr
for i = 1, n_pair do
  local key = KEYS[k + i]
  local start = tonumber(redis.call('HGET', key, 'start_ms') or '0')
  if start <= 0 or tonumber(ARGV[a + 1]) - start > window_ms then
    redis.call('HSET', key, 'start_ms', ARGV[a], 'value_usd', ARGV[a + 2], 'parcels', ARGV[a + 3])
  else
    redis.call('HINCRBYFLOAT', key, 'value_usd', ARGV[a + 2])
    redis.call('HINCRBY', key, 'parcels', ARGV[a + 3])
  end
  redis.call('PEXPIRE', key, math.floor(window_ms * 2))
  a = a + 4
end
for i = 1, n_exam do
  local key = prefix .. ':parcel:' .. ARGV[a]
  redis.call('HSET', key, 's', ARGV[a + 1], 'a', ARGV[a + 2], 'l', ARGV[a + 3],
    'r', ARGV[a + 4], 'c', ARGV[a + 5])
  redis.call('EXPIRE', key, exam_ttl)
  a = a + 6
end
-- decision digests of this batch's records, and those of outputs since acknowledged
local n_ob = tonumber(ARGV[a])
a = a + 1
for i = 1, n_ob do
  local key = prefix .. ':ob:' .. ARGV[a]
  redis.call('ZADD', key, ARGV[a + 1], ARGV[a + 2])
  redis.call('EXPIRE', key, 7 * 86400)
  a = a + 3
end
local n_pr = tonumber(ARGV[a])
a = a + 1
for i = 1, n_pr do
  redis.call('ZREMRANGEBYSCORE', prefix .. ':ob:' .. ARGV[a], '-inf', ARGV[a + 1])
  a = a + 2
end
for i = 1, n_wm do
  redis.call('SET', KEYS[i], ARGV[12 + 2 * (i - 1) + 1])
end
return 1
"""
)


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
        **client_options: Any,
    ) -> None:
        self.exam_ttl_s = exam_ttl_s
        self.window_ms = window_ms
        self.address_ttl_s = address_ttl_s
        self.half_life_ms = half_life_ms
        self.learner_keep = learner_history
        # No retries inside the client: the worker's own loop retries with backoff, counts
        # the failures in metrics and stops consuming meanwhile.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            **client_options,
        )
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._apply = self.client.register_script(_APPLY_LUA)
        self._read = self.client.register_script(_READ_LUA)
        self._exams = self.client.register_script(_EXAMS_LUA)

    @classmethod
    def from_settings(
        cls, settings: Settings, socket_timeout_s: float = 5.0
    ) -> RedisReputationStore:
        return cls(
            settings.redis_url,
            prefix=settings.redis_key_prefix,
            socket_timeout_s=socket_timeout_s,
            half_life_ms=settings.half_life_ms,
            **redis_options(settings),
        )

    def shipper_key(self, shipper_id: str) -> str:
        return f"{self.prefix}:shipper:{shipper_id}"

    def seller_key(self, seller: str) -> str:
        return f"{self.prefix}:seller:{seller}"

    def address_key(self, address: str) -> str:
        return f"{self.prefix}:addr:{address}"

    def pair_key(self, pair: str) -> str:
        return f"{self.prefix}:pair:{pair}"

    def watermark_key(self, part: Partition) -> str:
        return f"{self.prefix}:wm:{part[0]}:{part[1]}"

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def read(
        self, keys: ShipperIndex, partitions: list[Partition]
    ) -> tuple[ReputationView, dict[Partition, int]]:
        """One round trip (one script call): shippers, sellers, addresses, pairs and
        watermarks; recent counts decayed to the batch's time."""
        n_s, n_l, n_a, n_p = len(keys.ids), len(keys.sellers), len(keys.addresses), len(keys.pairs)
        redis_keys = [
            *(self.shipper_key(x) for x in keys.ids),
            *(self.seller_key(x) for x in keys.sellers),
            *(self.address_key(x) for x in keys.addresses),
            *(self.pair_key(x) for x in keys.pairs),
            *(self.watermark_key(p) for p in partitions),
        ]
        args = [n_s, n_l, n_a, n_p, keys.today]
        flat: list[Any] = await self._read(keys=redis_keys, args=args)
        sizes = (_SHIPPER_FIELDS * n_s, _SELLER_FIELDS * n_l, 3 * n_a, 3 * n_p, len(partitions))
        flat += [None] * (sum(sizes) - len(flat))

        def col(values: list[Any]) -> F64:
            return np.array([float(v) if v is not None else 0.0 for v in values], dtype=np.float64)

        parts, at = [], 0
        for size in sizes:
            parts.append(flat[at : at + size])
            at += size
        sh, sl, addr, pr, wm = parts
        now, hl = float(keys.now_ms), self.half_life_ms
        w = _SHIPPER_FIELDS
        f_sh = decay_factor(col(sh[12::w]), now, hl)
        f_sl = decay_factor(col(sl[1::_SELLER_FIELDS]), now, hl)
        view = ReputationView(
            seen=col(sh[0::w]),
            holds=col(sh[1::w]),
            value_usd=col(sh[2::w]),
            first_seen_ms=col(sh[3::w]),
            address_shippers=col(addr[0::3]),
            pair_start_ms=col(pr[0::3]),
            pair_value_usd=col(pr[1::3]),
            pair_parcels=col(pr[2::3]),
            day_counts=np.stack([col(sh[4 + d :: w]) for d in range(8)], axis=1)
            if n_s
            else np.zeros((0, 8)),
            exams=col(sh[15::w]) * f_sh,
            violations=col(sh[16::w]) * f_sh,
            address_violations=col(addr[2::3]) * decay_factor(col(addr[1::3]), now, hl),
            recent_seen=col(sh[13::w]) * f_sh,
            recent_holds=col(sh[14::w]) * f_sh,
            seller_seen=col(sl[0::_SELLER_FIELDS]),
            seller_recent_seen=col(sl[2::_SELLER_FIELDS]) * f_sl,
            seller_recent_holds=col(sl[3::_SELLER_FIELDS]) * f_sl,
            seller_exams=col(sl[4::_SELLER_FIELDS]) * f_sl,
            seller_violations=col(sl[5::_SELLER_FIELDS]) * f_sl,
        )
        marks = {
            part: int(raw) for part, raw in zip(partitions, wm, strict=True) if raw is not None
        }
        return view, marks

    async def apply(self, update: ReputationUpdate) -> bool:
        """Apply atomically; False when a watermark moved (the caller re-reads)."""
        if update.is_empty():
            return True
        keys: list[str] = []
        args: list[Any] = [
            len(update.watermarks), self.ttl_s, len(update.shippers) + len(update.sellers),
            len(update.addresses), len(update.pairs), repr(float(self.window_ms)),
            self.address_ttl_s, len(update.examinable), self.prefix, self.exam_ttl_s,
            repr(float(self.half_life_ms)),
        ]  # fmt: skip
        for part, (expected, new) in update.watermarks.items():
            keys.append(self.watermark_key(part))
            args.extend((str(expected), str(new)))
        entities = [(self.shipper_key(d.entity_id), d) for d in update.shippers]
        entities += [(self.seller_key(d.entity_id), d) for d in update.sellers]
        for key, d in entities:
            keys.append(key)
            args.extend((d.seen, repr(d.value_usd), d.holds, d.first_seen_ms, d.last_seen_ms))
            args.append(len(d.days))
            for day, count in d.days:
                args.extend((day, count))
        for address, shipper_ids in update.addresses:
            keys.append(self.address_key(address))
            args.append(len(shipper_ids))
            args.extend(shipper_ids)
        for p in update.pairs:
            keys.append(self.pair_key(p.pair))
            args.extend((p.first_ms, p.last_ms, repr(p.value_usd), p.parcels))
        for parcel_id, ref in update.examinable:
            args.extend((parcel_id, ref.shipper_id, ref.address, ref.seller,
                         ",".join(ref.rules), repr(ref.static_score)))  # fmt: skip
        args.append(len(update.outbox))
        for (topic, partition), offset, digest in update.outbox:
            args.extend((f"{topic}:{partition}", offset, digest))
        args.append(len(update.prune))
        for (topic, partition), offset in update.prune.items():
            args.extend((f"{topic}:{partition}", offset))
        return bool(await self._apply(keys=keys, args=args))

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
            pipe.zrangebyscore(f"{self.prefix}:ob:{topic}:{partition}", lo, hi)
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
            pipe.hmget(f"{self.prefix}:parcel:{pid}", ("s", "a", "l", "r", "c"))
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
            pipe.exists(f"{self.prefix}:exam:{e}")
        return [bool(x) for x in await pipe.execute()]

    async def read_learner(self) -> LearnerState:
        return decode_state(await self.client.hget(f"{self.prefix}:learner", "state"))

    async def learner_history(self, n: int) -> list[LearnerState]:
        raw = await self.client.lrange(f"{self.prefix}:learner:history", 0, n - 1)
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
            days={int(k[1:]): int(v) for k, v in get.items() if k[:1] == "d" and k[1:].isdigit()},
            exams=int(get.get("exams", 0)),
            violations=int(get.get("violations", 0)),
            recent_t_ms=float(get.get("t", 0)),
            recent_seen=float(get.get("rs", 0)),
            recent_holds=float(get.get("rh", 0)),
            recent_exams=float(get.get("re", 0)),
            recent_violations=float(get.get("rv", 0)),
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
        self, url: str, prefix: str = "ps", half_life_ms: float = DEFAULT_HALF_LIFE_MS
    ) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._store = RedisReputationStore(url, prefix=prefix, half_life_ms=half_life_ms)

    def read(
        self, keys: ShipperIndex, partitions: list[Partition]
    ) -> tuple[ReputationView, dict[Partition, int]]:
        return self._loop.run_until_complete(self._store.read(keys, partitions))

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
