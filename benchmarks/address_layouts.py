"""What another layout of the consignee address's state would cost in Redis, measured
before building it.

For 4,000 addresses a call (30 calls), a Lua script does to each address what a batch's
read and write do now (``SCARD`` of its shipper set, ``HMGET`` of its violations,
``SISMEMBER`` where the set exists, ``SADD``, ``EXPIRE``), and the same work in two other
layouts: one hash an address (its shippers as fields, its violations in two more), and 64
bucket hashes (one ``HMGET`` and one ``HSET`` a bucket for all of its addresses). Printed:
Redis's CPU an address, for shares of addresses already stored of about 0, 50 and 85 %.
It starts a redis-server of its own (nothing else runs on it).

    python benchmarks/address_layouts.py
"""

from __future__ import annotations

import random
import shutil
import tempfile

import redis

from parcel_stream.adapters.devstack import private_redis

NOW = """
local n = 0
for i = 1, #ARGV do
  local key = 'p@addr:' .. ARGV[i]
  local c = redis.call('SCARD', key .. '@addr_shippers')
  local v = redis.call('HMGET', key .. '@addr_violations', 't', 'rv')
  if c > 0 then n = n + redis.call('SISMEMBER', key .. '@addr_shippers', 'S1') end
end
for i = 1, #ARGV do
  local key = 'p@addr:' .. ARGV[i] .. '@addr_shippers'
  redis.call('SADD', key, 'S1')
  redis.call('EXPIRE', key, 2592000)
end
return n
"""

ONE_HASH = """
local n = 0
for i = 1, #ARGV do
  local key = 'q@addr:' .. ARGV[i]
  local row = redis.call('HMGET', key, '~t', '~rv', 'S1')
  local c = redis.call('HLEN', key)
  if row[3] then n = n + 1 end
end
for i = 1, #ARGV do
  local key = 'q@addr:' .. ARGV[i]
  redis.call('HSET', key, 'S1', '1')
  redis.call('EXPIRE', key, 2592000)
end
return n
"""

BUCKETS = """
local by = {}
for i = 1, #ARGV do
  local id = ARGV[i]
  local b = 'b@addr:' .. (tonumber(string.sub(id, -2), 36) or 0) % 64
  local t = by[b]
  if not t then t = {}; by[b] = t end
  t[#t + 1] = id
end
local n = 0
for b, ids in pairs(by) do
  local got = redis.call('HMGET', b, unpack(ids))
  local args = {}
  for j = 1, #ids do
    if got[j] then n = n + 1 end
    args[#args + 1] = ids[j]
    args[#args + 1] = 'S1;20421'
  end
  redis.call('HSET', b, unpack(args))
end
return n
"""

ADDRESSES, CALLS = 4_000, 30


def main() -> None:
    data = tempfile.mkdtemp(prefix="parcel-stream-addr-")
    with private_redis(data) as port:
        client = redis.Redis(port=port)

        def cpu() -> float:
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        layouts = {"now (a set and a hash each)": NOW, "one hash each": ONE_HASH,
                   "64 bucket hashes": BUCKETS}  # fmt: skip
        rng = random.Random(7)
        print(f"Redis CPU an address ({ADDRESSES:,} addresses a call, {CALLS} calls):")
        for share in (0.0, 0.5, 0.85):
            cells = []
            for name, lua in layouts.items():
                client.flushall()
                script = client.register_script(lua)
                spent = 0.0
                for c in range(CALLS):
                    ids = [f"old{i % 3000}" if rng.random() < share else f"a{c}-{i}"
                           for i in range(ADDRESSES)]  # fmt: skip
                    t = cpu()
                    script(args=ids)
                    spent += cpu() - t
                cells.append(f"{name} {spent / (CALLS * ADDRESSES) * 1e6:.2f} µs")
            print(f"  about {share:.0%} already stored: " + ", ".join(cells))
        client.close()
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
