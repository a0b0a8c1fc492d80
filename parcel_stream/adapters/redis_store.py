"""Shipper reputation in Redis: one pipelined read and one atomic script call per batch.

Key layout (prefix from ``PARCEL_REDIS_KEY_PREFIX``, default ``ps``):

- ``ps:shipper:{id}`` hash: ``seen``, ``value_usd``, ``holds``, ``first_seen_ms``,
  ``last_seen_ms`` and ``d{day}`` parcel counts of the last 8 (manifest-time) days;
  expires ``ttl_s`` after its last update (bounded memory).
- ``ps:addr:{address key}`` HyperLogLog of the shipper ids seen sending to a consignee
  address (the key is a hash of the normalised address); expires 30 days after its last
  update.
- ``ps:pair:{address key}:{shipper id}`` hash: ``start_ms``, ``value_usd``, ``parcels`` of
  the open split-shipment window (72 h by default, by manifest time).
- ``ps:parcel:{parcel id}`` hash: shipper id and address key of a parcel sent to review
  or hold, so an examination result can be traced (180 days).
- ``ps:exam:{exam id}`` marks an applied examination result (duplicates are ignored);
  ``ps:addr:{address key}:violations`` counts violations found at an address.
- ``ps:wm:{topic}:{partition}`` string: the last input offset applied from that partition.

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

from parcel_stream.features import ReputationView, ShipperIndex
from parcel_stream.reputation import ExamDelta, Partition, ReputationUpdate, ShipperState

FIELDS = ("seen", "holds", "value_usd", "first_seen_ms", "last_seen_ms")
F64 = npt.NDArray[np.float64]

# One command reads everything a batch needs (one reply array, no per-key command
# overhead): 14 fields per shipper (4 + 8 day counts + exams, violations), 2 per address
# (distinct shippers, exam violations), 3 per pair, then the watermarks.
_READ_LUA = """
local n_sh, n_addr, n_pair = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local today = tonumber(ARGV[4])
local out = {}
local k = 0
for i = 1, n_sh do
  local row = redis.call('HMGET', KEYS[k + i], 'seen', 'holds', 'value_usd', 'first_seen_ms',
    'd' .. today, 'd' .. (today - 1), 'd' .. (today - 2), 'd' .. (today - 3),
    'd' .. (today - 4), 'd' .. (today - 5), 'd' .. (today - 6), 'd' .. (today - 7),
    'exams', 'violations')
  for j = 1, 14 do out[#out + 1] = row[j] end
end
k = k + n_sh
for i = 1, n_addr do
  out[#out + 1] = redis.call('PFCOUNT', KEYS[k + i])
  out[#out + 1] = redis.call('GET', KEYS[k + i] .. ':violations')
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
# shipper and on the consignee address.
_EXAMS_LUA = """
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for a = 3, #ARGV, 4 do
  local fresh = redis.call('SET', prefix .. ':exam:' .. ARGV[a], '1', 'NX', 'EX', ttl)
  if fresh then
    local shipper = prefix .. ':shipper:' .. ARGV[a + 1]
    redis.call('HINCRBY', shipper, 'exams', 1)
    if ARGV[a + 3] == '1' then
      redis.call('HINCRBY', shipper, 'violations', 1)
      redis.call('INCR', prefix .. ':addr:' .. ARGV[a + 2] .. ':violations')
      redis.call('EXPIRE', prefix .. ':addr:' .. ARGV[a + 2] .. ':violations', ttl)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

_APPLY_LUA = """
local n_wm, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local n_sh, n_addr, n_pair = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window_ms, addr_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local n_exam, prefix, exam_ttl = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local a = 11
for i = 1, n_wm do
  local cur = redis.call('GET', KEYS[i]) or '-1'
  if cur ~= ARGV[a + 2 * (i - 1)] then return 0 end
end
a = a + 2 * n_wm
local k = n_wm
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
  redis.call('HSET', key, 's', ARGV[a + 1], 'a', ARGV[a + 2])
  redis.call('EXPIRE', key, exam_ttl)
  a = a + 3
end
for i = 1, n_wm do
  redis.call('SET', KEYS[i], ARGV[11 + 2 * (i - 1) + 1])
end
return 1
"""


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
    ) -> None:
        self.exam_ttl_s = exam_ttl_s
        self.window_ms = window_ms
        self.address_ttl_s = address_ttl_s
        # No retries inside the client: the worker's own loop retries with backoff, counts
        # the failures in metrics and stops consuming meanwhile.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._apply = self.client.register_script(_APPLY_LUA)
        self._read = self.client.register_script(_READ_LUA)
        self._exams = self.client.register_script(_EXAMS_LUA)

    def shipper_key(self, shipper_id: str) -> str:
        return f"{self.prefix}:shipper:{shipper_id}"

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
        """One round trip (one script call): shippers, addresses, pairs and watermarks."""
        n_s, n_a, n_p = len(keys.ids), len(keys.addresses), len(keys.pairs)
        redis_keys = [
            *(self.shipper_key(x) for x in keys.ids),
            *(self.address_key(x) for x in keys.addresses),
            *(self.pair_key(x) for x in keys.pairs),
            *(self.watermark_key(p) for p in partitions),
        ]
        flat: list[Any] = await self._read(keys=redis_keys, args=[n_s, n_a, n_p, keys.today])
        flat += [None] * (14 * n_s + 2 * n_a + 3 * n_p + len(partitions) - len(flat))

        def col(values: list[Any]) -> F64:
            return np.array([float(v) if v is not None else 0.0 for v in values], dtype=np.float64)

        sh = flat[: 14 * n_s]
        addr = flat[14 * n_s : 14 * n_s + 2 * n_a]
        pr = flat[14 * n_s + 2 * n_a : 14 * n_s + 2 * n_a + 3 * n_p]
        wm = flat[14 * n_s + 2 * n_a + 3 * n_p :]
        view = ReputationView(
            seen=col(sh[0::14]),
            holds=col(sh[1::14]),
            value_usd=col(sh[2::14]),
            first_seen_ms=col(sh[3::14]),
            address_shippers=col(addr[0::2]),
            pair_start_ms=col(pr[0::3]),
            pair_value_usd=col(pr[1::3]),
            pair_parcels=col(pr[2::3]),
            day_counts=np.stack([col(sh[4 + d :: 14]) for d in range(8)], axis=1)
            if n_s
            else np.zeros((0, 8)),
            exams=col(sh[12::14]),
            violations=col(sh[13::14]),
            address_violations=col(addr[1::2]),
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
            len(update.watermarks), self.ttl_s, len(update.shippers), len(update.addresses),
            len(update.pairs), repr(float(self.window_ms)), self.address_ttl_s,
            len(update.examinable), self.prefix, self.exam_ttl_s,
        ]  # fmt: skip
        for part, (expected, new) in update.watermarks.items():
            keys.append(self.watermark_key(part))
            args.extend((str(expected), str(new)))
        for d in update.shippers:
            keys.append(self.shipper_key(d.shipper_id))
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
        for parcel_id, shipper_id, address in update.examinable:
            args.extend((parcel_id, shipper_id, address))
        return bool(await self._apply(keys=keys, args=args))

    async def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Shipper and address key of parcels that went to review or hold (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for pid in parcel_ids:
            pipe.hmget(f"{self.prefix}:parcel:{pid}", ("s", "a"))
        rows: list[Any] = await pipe.execute()
        return {
            pid: (_text(s), _text(a))
            for pid, (s, a) in zip(parcel_ids, rows, strict=True)
            if s is not None and a is not None
        }

    async def apply_exams(self, deltas: list[ExamDelta]) -> list[bool]:
        """Apply each result once, keyed by exam id (one script call); True = applied now."""
        if not deltas:
            return []
        args: list[Any] = [self.prefix, self.exam_ttl_s]
        for d in deltas:
            args.extend((d.exam_id, d.shipper_id, d.address, int(d.violation)))
        res: list[Any] = await self._exams(keys=[], args=args)
        return [bool(int(x)) for x in res]

    async def shipper(self, shipper_id: str) -> ShipperState | None:
        raw = await self.client.hgetall(self.shipper_key(shipper_id))
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
        )

    async def close(self) -> None:
        await self.client.aclose()


class BlockingRedisStore:
    """The Redis store behind a synchronous interface (backtests, tools): runs the async
    store on a private event loop."""

    def __init__(self, url: str, prefix: str = "ps") -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._store = RedisReputationStore(url, prefix=prefix)

    def read(
        self, keys: ShipperIndex, partitions: list[Partition]
    ) -> tuple[ReputationView, dict[Partition, int]]:
        return self._loop.run_until_complete(self._store.read(keys, partitions))

    def apply(self, update: ReputationUpdate) -> bool:
        return self._loop.run_until_complete(self._store.apply(update))

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, tuple[str, str]]:
        return self._loop.run_until_complete(self._store.lookup_parcels(parcel_ids))

    def apply_exams(self, deltas: list[ExamDelta]) -> list[bool]:
        return self._loop.run_until_complete(self._store.apply_exams(deltas))

    def close(self) -> None:
        self._loop.run_until_complete(self._store.close())
        self._loop.close()
