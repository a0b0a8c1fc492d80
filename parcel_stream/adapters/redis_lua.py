"""The Lua scripts of the Redis stores (single node: ``redis_store.py``; cluster:
``redis_cluster.py``). Each takes its arguments as msgpack and names its keys by kind
(``'@shipper:'``); ``keys_in`` fills the kinds in from the declaration in ``state.py``."""

from __future__ import annotations

from parcel_stream.sequence import ENTITY_FIELDS
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
    RISK,
    RISK_LOG,
    RISK_NAMES,
    RISK_SEQ,
    SELLER,
    SHIPPER,
    WATERMARK,
)

# Decayed counters ("recent" counts): fields t (reference ms) and the values named in
# the call, brought up to date as reputation.decay_add does. Numbers are written with 17
# significant digits so that they read back bit for bit.
DECAY_LUA = """
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

# Shippers and sellers: a hash with the version ``v``, the entity's values packed
# (``ENTITY_FIELDS`` in order, little-endian doubles) in fields ``p0``, ``p1``, ... of at
# most 64 bytes each (longer values would turn the hash from Redis's compact listpack into a
# hash table: 1.5 x the memory), the lifetime ``exams`` and ``violations`` counts, and for
# shippers the newest day ``dn`` and day counts ``dd``. Two fields to read and write rather
# than ten, which cost Redis about 7 us more an entity each way. Earlier versions kept one
# text field per value: such a hash is packed in place the first time a batch or an
# examination result reads it (values and version kept).
PACKED_PART_BYTES = 64
PACKED_PARTS = tuple(f"p{k}" for k in range(-(-8 * len(ENTITY_FIELDS) // PACKED_PART_BYTES)))
ENTITY_LUA = (
    """
local ENTITY_FIELDS = {ENTITY_FIELDS}
local PARTS = {PARTS}
local PACKED = '<' .. string.rep('d', #ENTITY_FIELDS)
local PACKED_BYTES = 8 * #ENTITY_FIELDS
-- the values from a reply whose first #PARTS entries are the parts (false: absent)
local function joined(row)
  if not row[1] then return false end
  local p = row[1]
  for k = 2, #PARTS do p = p .. (row[k] or '') end
  return p
end
-- HSET arguments for packed values p (appended to row)
local function parts_args(row, p)
  for k = 1, #PARTS do
    row[#row + 1] = PARTS[k]
    row[#row + 1] = string.sub(p, {PART} * (k - 1) + 1, {PART} * k)
  end
  return row
end
local function entity_packed(key)
  local row = redis.call('HMGET', key, unpack(ENTITY_FIELDS))
  local x = {}
  for j = 1, #ENTITY_FIELDS do x[j] = tonumber(row[j]) or 0 end
  local p = struct.pack(PACKED, unpack(x))
  redis.call('HSET', key, unpack(parts_args({}, p)))
  redis.call('HDEL', key, unpack(ENTITY_FIELDS))
  return p
end
-- an examination's result: recent examinations and violations brought up to date and
-- added (as decay_add does for the fields t, rs, rh, re, rv)
local function entity_exam(key, at, hl, v)
  local p = joined(redis.call('HMGET', key, unpack(PARTS))) or entity_packed(key)
  -- stored before fields were added at the end: those are 0
  if #p < PACKED_BYTES then p = p .. string.rep('\\0', PACKED_BYTES - #p) end
  local x = {struct.unpack(PACKED, p)}
  local t = x[6]
  if t <= 0 then t = at end
  local deltas = {0, 0, 1, v}
  if at >= t then
    local f = 2 ^ (-(at - t) / hl)
    x[6] = at
    for i = 1, 4 do x[6 + i] = x[6 + i] * f + deltas[i] end
  else
    local g = 2 ^ (-(t - at) / hl)
    x[6] = t
    for i = 1, 4 do x[6 + i] = x[6 + i] + deltas[i] * g end
  end
  p = struct.pack(PACKED, unpack(x, 1, #ENTITY_FIELDS))
  redis.call('HSET', key, unpack(parts_args({}, p)))
end
""".replace("{ENTITY_FIELDS}", "{" + ", ".join(f"'{f}'" for f in ENTITY_FIELDS) + "}")
    .replace("{PARTS}", "{" + ", ".join(f"'{f}'" for f in PACKED_PARTS) + "}")
    .replace("{PART}", str(PACKED_PART_BYTES))
)
_T = ENTITY_FIELDS.index("t") + 1
assert ENTITY_FIELDS[_T - 1 : _T + 4] == ("t", "rs", "rh", "re", "rv")  # as entity_exam reads

# One command reads everything a batch needs (one msgpack argument in, one reply array
# out, so no per-key argument encoding): per shipper the entity fields, its version, its
# newest day and day counts (``dd``: 16 counts up to that day); per seller the entity
# fields and version; per address the distinct shippers stored and its recent violations;
# per pair the open window and its version; per (address, shipper) combination whether it
# is stored; the watermarks.
SHIPPER_WIDTH = 4  # the packed values, v, dn, dd
SELLER_WIDTH = 2  # the packed values, v
PARTS = ", ".join(f"'{f}'" for f in PACKED_PARTS)
N_PARTS = len(PACKED_PARTS)
READ_LUA = (
    ENTITY_LUA
    + f"""
local u = cmsgpack.unpack(ARGV[1])
local prefix, shippers, sellers, addresses, pairs_, combos, marks =
  u[1], u[2], u[3], u[4], u[5], u[6], u[7]
local out = {{}}
local n = 0
for _, id in ipairs(shippers) do
  local key = prefix .. '@shipper:' .. id
  local row = redis.call('HMGET', key, {PARTS}, 'v', 'dn', 'dd')
  local p = joined(row)
  if not p and row[{N_PARTS} + 1] then p = entity_packed(key) end
  n = n + 1; out[n] = p
  for j = {N_PARTS} + 1, {N_PARTS} + 3 do n = n + 1; out[n] = row[j] end
end
for _, id in ipairs(sellers) do
  local key = prefix .. '@seller:' .. id
  local row = redis.call('HMGET', key, {PARTS}, 'v')
  local p = joined(row)
  if not p and row[{N_PARTS} + 1] then p = entity_packed(key) end
  n = n + 1; out[n] = p
  n = n + 1; out[n] = row[{N_PARTS} + 1]
end
-- the addresses' recent violations: few addresses have any, so their keys are counted
-- 500 at a time and read only in a group where some exist
local viol = {{}}
for lo = 1, #addresses, 500 do
  local hi = math.min(lo + 499, #addresses)
  local keys = {{}}
  for a = lo, hi do keys[a - lo + 1] = prefix .. '@addr:' .. addresses[a] .. '@addr_violations' end
  if redis.call('EXISTS', unpack(keys)) > 0 then
    for a = lo, hi do viol[a] = redis.call('HMGET', keys[a - lo + 1], 't', 'rv') end
  end
end
local cards = {{}}
for a, id in ipairs(addresses) do
  cards[a] = redis.call('SCARD', prefix .. '@addr:' .. id .. '@addr_shippers')
  n = n + 1; out[n] = cards[a]
  local v = viol[a]
  n = n + 1; out[n] = v and v[1] or false
  n = n + 1; out[n] = v and v[2] or false
end
for _, id in ipairs(pairs_) do
  local row = redis.call('HMGET', prefix .. '@pair:' .. id, 'start_ms', 'value_usd', 'parcels', 'v')
  for j = 1, 4 do n = n + 1; out[n] = row[j] end
end
for c = 1, #combos, 2 do  -- (an address with no shippers stored has none of them)
  n = n + 1
  if cards[combos[c]] == 0 then out[n] = 0 else
    out[n] = redis.call('SISMEMBER', prefix .. '@addr:' .. addresses[combos[c]] .. '@addr_shippers',
      combos[c + 1])
  end
end
for _, part in ipairs(marks) do
  n = n + 1; out[n] = redis.call('GET', prefix .. '@wm:' .. part)
end
return out
"""
)

# Remembered parcels of a batch (one msgpack list of parcel ids in).
PARCELS_LUA = """
local u = cmsgpack.unpack(ARGV[1])
local prefix, ids = u[1], u[2]
local out = {}
for j = 1, #ids, 500 do
  local keys = {}
  for k = j, math.min(j + 499, #ids) do keys[#keys + 1] = prefix .. '@pid:' .. ids[k] end
  local got = redis.call('MGET', unpack(keys))
  for k = 1, #got do out[j + k - 1] = got[k] end
end
return out
"""

# The learned model's counts of a batch's keys (ARGV[1] the counts hash, ARGV[2] the key
# ids, 8 bytes each): n, v, t per key as packed little-endian doubles (the stored value),
# NaN when the key has none. One HMGET per 7,000 keys (under the 8,000 arguments that
# unpack takes), the misses filled in place. The value norms are read the same
# way, ARGV[3] = 4 doubles a row.
RISK_READ_LUA = """
local hash, ids = ARGV[1], ARGV[2]
local none = string.rep(struct.pack('<d', 0 / 0), tonumber(ARGV[3] or 3))
local n = #ids / 8
local parts = {}
for lo = 1, n, 7000 do
  local fields, m = {}, 0
  for j = lo, math.min(lo + 6999, n) do
    m = m + 1
    fields[m] = string.sub(ids, 8 * j - 7, 8 * j)
  end
  local got = redis.call('HMGET', hash, unpack(fields))
  for k = 1, m do if not got[k] then got[k] = none end end
  parts[#parts + 1] = table.concat(got)
end
return table.concat(parts)
"""

# Every change to the learned counts is logged (``state.RISK_LOG``): the change's number
# (INCR of ``seq``) is its stream entry's id, the changed keys' ids its field ``k``. So a
# worker that keeps a copy of the counts (``adapters/risk_replica.py``) reads only what
# changed since the number it holds, and sees any gap (a trimmed log, a cleared store).
RISK_LOG_LUA = """
local function risk_log(log, seq, fields)
  if #fields == 0 then return end
  local n = redis.call('INCR', seq)
  redis.call('XADD', log, 'MAXLEN', '~', 20000, n .. '-0', 'k', table.concat(fields))
end
"""

# Drop the learned keys whose decayed examinations are under ARGV[3] at ARGV[4] (ms; half-
# life ARGV[5] ms), scanning ARGV[6] fields of the counts hash ARGV[1] from cursor ARGV[7];
# their names go from ARGV[2], and the drop is logged (log ARGV[8], number ARGV[9]).
# Returns {next cursor, keys dropped}.
RISK_PRUNE_LUA = (
    RISK_LOG_LUA
    + """
local hash, names = ARGV[1], ARGV[2]
local floor, now, hl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local res = redis.call('HSCAN', hash, ARGV[7], 'COUNT', tonumber(ARGV[6]))
local gone = {}
local kv = res[2]
for j = 1, #kv, 2 do
  local n, v, t = struct.unpack('<ddd', kv[j + 1])
  if t > 0 and now > t then n = n * 2 ^ (-(now - t) / hl) end
  if n < floor then gone[#gone + 1] = kv[j] end
end
if #gone > 0 then
  redis.call('HDEL', hash, unpack(gone))
  redis.call('HDEL', names, unpack(gone))
  risk_log(ARGV[8], ARGV[9], gone)
end
return {res[1], #gone}
"""
)

# A worker's copy of the counts brought up to date (ARGV[1] the counts hash, ARGV[2] the
# log, ARGV[3] the change number, ARGV[4] the number the copy holds, -1: none). Returns
# {number} when nothing changed; {number, ids, rows} with the changed keys (8 bytes each)
# and their counts now (3 doubles each, NaN: dropped); {number, 0} when the copy must be
# loaded again (none yet, or changes missing from the log: trimmed, or the store cleared).
RISK_SYNC_LUA = """
local hash, log = ARGV[1], ARGV[2]
local last = tonumber(ARGV[4])
local now = tonumber(redis.call('GET', ARGV[3]) or '0')
if last == now then return {now} end
if last < 0 or last > now or now - last > 20000 then return {now, 0} end
local got = redis.call('XRANGE', log, (last + 1) .. '-0', now .. '-0')
if #got ~= now - last then return {now, 0} end
local seen, fields = {}, {}
for _, e in ipairs(got) do
  local blob = e[2][2]
  for j = 1, #blob, 8 do
    local f = string.sub(blob, j, j + 7)
    if not seen[f] then
      seen[f] = true
      fields[#fields + 1] = f
    end
  end
end
local none = string.rep(struct.pack('<d', 0 / 0), 3)
local rows = {}
for lo = 1, #fields, 7000 do
  local part = {}
  for j = lo, math.min(lo + 6999, #fields) do part[#part + 1] = fields[j] end
  local vals = redis.call('HMGET', hash, unpack(part))
  for k = 1, #part do rows[#rows + 1] = vals[k] or none end
end
return {now, table.concat(fields), table.concat(rows)}
"""

# Store learned keys' counts as they are (a warm start): ARGV[1] the counts hash, ARGV[2]
# the names, ARGV[3] the log, ARGV[4] the change number, ARGV[5] the ids (8 bytes each),
# ARGV[6] their counts (3 doubles each), then (id, name) pairs of the keys to name.
RISK_WRITE_LUA = (
    RISK_LOG_LUA
    + """
local hash, names, ids, rows = ARGV[1], ARGV[2], ARGV[5], ARGV[6]
local fields = {}
for j = 1, #ids / 8 do
  local f = string.sub(ids, 8 * j - 7, 8 * j)
  redis.call('HSET', hash, f, string.sub(rows, 24 * j - 23, 24 * j))
  fields[j] = f
end
for a = 7, #ARGV, 2 do redis.call('HSET', names, ARGV[a], ARGV[a + 1]) end
risk_log(ARGV[3], ARGV[4], fields)
return #fields
"""
)

# Delete every learned key's counts, names and log (ARGV[1..3]); the change number
# (ARGV[4]) moves on, so that every copy is loaded again.
RISK_CLEAR_LUA = """
redis.call('DEL', ARGV[1], ARGV[2], ARGV[3])
return redis.call('INCR', ARGV[4])
"""

# An examination result's count on its learned keys (``risk.py``): JSON [weight, half-life
# ms, then per key its id in hex and its name]. Each key's counts in ``hash`` are brought up
# to date (as decay_add does) and the weighted examination and violation added; a key with
# at least 5 examinations keeps its name in ``names``.
RISK_COUNT_LUA = (
    RISK_LOG_LUA
    + """
local function unhex(h)
  return (h:gsub('..', function(c) return string.char(tonumber(c, 16)) end))
end
local function risk_count(hash, names, spec, v, at, touched)
  if spec == '' then return end
  local r = cjson.decode(spec)
  local w, hl = tonumber(r[1]), tonumber(r[2])
  for j = 3, #r, 2 do
    local field = unhex(r[j])
    local cur = redis.call('HGET', hash, field)
    local n, vv, t = 0, 0, at
    if cur then n, vv, t = struct.unpack('<ddd', cur) end
    if t <= 0 then t = at end
    if at >= t then
      local f = 2 ^ (-(at - t) / hl)
      n, vv, t = n * f + w, vv * f + w * v, at
    else
      local g = 2 ^ (-(t - at) / hl)
      n, vv = n + w * g, vv + w * v * g
    end
    redis.call('HSET', hash, field, struct.pack('<ddd', n, vv, t))
    touched[#touched + 1] = field
    if n >= 5 and r[j + 1] ~= '' then redis.call('HSET', names, field, r[j + 1]) end
  end
end
"""
)

# Examination results: each applied once (SET NX on the exam id), then counted on the
# shipper, the seller and the consignee address. With a learner state (ARGV[4] not
# empty) the call is all or nothing: it fails (returns -1) unless the learner version is
# still ARGV[5] and none of the results was applied meanwhile, so that the weights learn
# from each result exactly once.
# Store a learner state under ``lkey`` with its version, and keep the last ``keep`` in the
# history list (both learner scripts).
STORE_LEARNER = """
local function store_learner(lkey, version, state, keep)
  redis.call('DEL', lkey)
  redis.call('HSET', lkey, 'version', version, 'state', state)
  redis.call('LPUSH', lkey .. '@learner_history', state)
  redis.call('LTRIM', lkey .. '@learner_history', 0, keep - 1)
end
"""

EXAMS_LUA = (
    DECAY_LUA
    + ENTITY_LUA
    + STORE_LEARNER
    + RISK_COUNT_LUA
    + """
local prefix, ttl, hl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local learner, expected = ARGV[4], ARGV[5]
local first = 8
if learner ~= '' then
  local cur = redis.call('HGET', prefix .. '@learner', 'version') or '0'
  if cur ~= expected then return -1 end
  for a = first, #ARGV, 7 do
    if redis.call('EXISTS', prefix .. '@exam:' .. ARGV[a]) == 1 then return -1 end
  end
end
local out, touched = {}, {}
for a = first, #ARGV, 7 do
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
      entity_exam(key, at, hl, v)
    end
    if v == 1 then
      local akey = prefix .. '@addr:' .. ARGV[a + 2] .. '@addr_violations'
      decay_add(akey, at, hl, {'rv'}, {1})
      redis.call('EXPIRE', akey, ttl)
    end
    risk_count(prefix .. '@risk_counts', prefix .. '@risk_names', ARGV[a + 6], v, at, touched)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
risk_log(prefix .. '@risk_log', prefix .. '@risk_seq', touched)
if learner ~= '' then
  store_learner(prefix .. '@learner', ARGV[6], learner, tonumber(ARGV[7]))
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
APPLY_LIB = (
    ENTITY_LUA
    + """
local num = function(x) return string.format('%.17g', x) end
-- The per-item parts of the update come as columns (one list a field: one table each to
-- unpack, not one a row); an earlier version's rows (a batch it prepared before an
-- upgrade) are turned into them first. u[18] is 2 for columns.
local function cols(rows, width)
  local out = {}
  for j = 1, width do out[j] = {} end
  for i, r in ipairs(rows) do
    for j = 1, width do out[j][i] = r[j] end
  end
  return out
end
local function columns(u)
  if u[18] == 2 then return u end
  u[8], u[9], u[11], u[12] = cols(u[8], 5), cols(u[9], 5), cols(u[11], 4), cols(u[12], 8)
  local keys, sizes, members = {}, {}, {}
  for i, m in ipairs(u[10]) do
    keys[i], sizes[i] = m[1], #m[2]
    for _, x in ipairs(m[2]) do members[#members + 1] = x end
  end
  u[10], u[18] = {keys, sizes, members}, 2
  return u
end
local function check(u)
  for _, w in ipairs(u[7]) do
    local cur = redis.call('GET', w[1]) or '-1'
    if w[2] == '' then
      if tonumber(cur) >= tonumber(w[3]) then return false end
    elseif cur ~= w[2] then return false end
  end
  local days = {}  -- each entity's day of its last TTL refresh (false: none), for write
  local keys, vers = u[8][1], u[8][2]
  for i = 1, #keys do
    local row = redis.call('HMGET', keys[i], 'v', 'x')
    if (tonumber(row[1]) or 0) ~= vers[i] then return false end
    days[i] = row[2]
  end
  u.ttl_days = days
  keys, vers = u[9][1], u[9][2]
  for i = 1, #keys do
    if (tonumber(redis.call('HGET', keys[i], 'v')) or 0) ~= vers[i] then return false end
  end
  local absent = {}  -- expected absent: checked 500 at a time
  local expected
  keys, expected = u[11][1], u[11][2]
  for i = 1, #keys do
    if expected[i] == '' then
      absent[#absent + 1] = keys[i]
      if #absent == 500 then
        if redis.call('EXISTS', unpack(absent)) > 0 then return false end
        absent = {}
      end
    else
      local have = redis.call('GET', keys[i])
      if have then have = string.sub(have, 1, 16) else have = '' end
      if have ~= expected[i] then return false end
    end
  end
  if #absent > 0 and redis.call('EXISTS', unpack(absent)) > 0 then return false end
  return true
end
local function write(u, blobs)
  local prefix, ttl, addr_ttl, exam_ttl, window_ms, parcel_ttl =
    u[1], u[2], u[3], u[4], u[5], u[6]
  local wm, ents, pairs_, members, parcels, exam, outbox, prune =
    u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14]
  local fields = {ENTITY_FIELDS}
  -- an entity's TTL is refreshed on its first write of the day (u[17], the writer's UTC
  -- day), by a day more than the TTL, so it lives at least the TTL after its last write;
  -- without the days the check read (a cluster's commit), on every write
  local today, days = u[17], u.ttl_days or {}
  local keys, vers, firsts, newest, day_texts = unpack(ents)
  for i = 1, #keys do
    local key, vals = keys[i], firsts[i]
    local row
    if type(vals) == 'table' then  -- an earlier version's (one text field per value),
      row = {'v', vers[i] + 1}     -- prepared before an upgrade: read packs it again
      for j = 1, #fields do
        row[#row + 1] = fields[j]
        row[#row + 1] = vals[j]
      end
      redis.call('HDEL', key, unpack(PARTS))
    else  -- the values packed, at byte firsts[i] of ARGV[2]
      row = parts_args({'v', vers[i] + 1}, string.sub(blobs, vals, vals + 8 * #fields - 1))
    end
    if newest[i] > 0 then
      row[#row + 1] = 'dn'
      row[#row + 1] = newest[i]
      row[#row + 1] = 'dd'
      row[#row + 1] = day_texts[i]
    end
    local refresh = ttl > 0 and (today == nil or days[i] ~= today)
    if refresh and today then
      row[#row + 1] = 'x'
      row[#row + 1] = today
    end
    redis.call('HSET', key, unpack(row))
    if refresh then redis.call('EXPIRE', key, ttl + (today and 86400 or 0)) end
  end
  local starts, values, counts
  keys, vers, starts, values, counts = unpack(pairs_)
  for i = 1, #keys do
    redis.call('HSET', keys[i], 'start_ms', num(starts[i]), 'value_usd', num(values[i]),
      'parcels', num(counts[i]), 'v', vers[i] + 1)
    redis.call('PEXPIRE', keys[i], math.floor(window_ms * 2))
  end
  local sizes, names
  keys, sizes, names = unpack(members)
  local at = 1
  for i = 1, #keys do
    local last = at + sizes[i] - 1
    for j = at, last, 500 do
      redis.call('SADD', keys[i], unpack(names, j, math.min(j + 499, last)))
    end
    at = last + 1
    if addr_ttl > 0 then redis.call('EXPIRE', keys[i], addr_ttl) end
  end
  local lasts
  keys, firsts, lasts = parcels[1], parcels[3], parcels[4]
  for i = 1, #keys do
    redis.call('SET', keys[i], string.sub(blobs, firsts[i], lasts[i]), 'EX', parcel_ttl)
  end
  local ids, shippers, addresses, sellers, rules, scores
  ids, shippers, addresses, sellers, rules, scores, firsts, lasts = unpack(exam)
  for i = 1, #ids do
    local key = prefix .. '@parcel:' .. ids[i]
    if lasts[i] > 0 then  -- with the learned model's ref
      redis.call('HSET', key, 's', shippers[i], 'a', addresses[i], 'l', sellers[i], 'r',
        rules[i], 'c', scores[i], 'k', string.sub(blobs, firsts[i], lasts[i]))
    else
      redis.call('HSET', key, 's', shippers[i], 'a', addresses[i], 'l', sellers[i], 'r',
        rules[i], 'c', scores[i])
    end
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
  for _, l in ipairs(u[15] or {}) do
    redis.call('SET', l[1], string.sub(blobs, l[2], l[3]))
  end
  -- value norms: [hash, ids first, last, rows first, last], 8-byte ids, 32-byte rows
  for _, m in ipairs(u[16] or {}) do
    local ids, rows = string.sub(blobs, m[2], m[3]), string.sub(blobs, m[4], m[5])
    local n = #ids / 8
    for lo = 1, n, 1000 do
      local args = {}
      for j = lo, math.min(lo + 999, n) do
        args[#args + 1] = string.sub(ids, 8 * j - 7, 8 * j)
        args[#args + 1] = string.sub(rows, 32 * j - 31, 32 * j)
      end
      redis.call('HSET', m[1], unpack(args))
    end
  end
  for _, w in ipairs(wm) do redis.call('SET', w[1], w[3]) end
end
""".replace("{ENTITY_FIELDS}", "{" + ", ".join(f"'{f}'" for f in ENTITY_FIELDS) + "}")
)

# Single node: check and write in one call (0: refused, nothing written).
APPLY_LUA = (
    APPLY_LIB
    + """
local u = columns(cmsgpack.unpack(ARGV[1]))
if not check(u) then return 0 end
write(u, ARGV[2])
return 1
"""
)


# The scripts name keys by their kind (``'@shipper:'``, ``'@addr_shippers'``): filled in
# from the declaration in ``state.py``, the one place the key scheme is written.
LUA_KEYS = {
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
    "@risk_counts": f":{RISK.segment}",
    "@risk_names": f":{RISK_NAMES.segment}{RISK_NAMES.suffix}",
    "@risk_log": f":{RISK_LOG.segment}{RISK_LOG.suffix}",
    "@risk_seq": f":{RISK_SEQ.segment}{RISK_SEQ.suffix}",
}


def keys_in(script: str) -> str:
    for token, text in LUA_KEYS.items():
        script = script.replace(token, text)
    if "'@" in script:
        raise ValueError("a key kind in a Lua script is not declared in state.py")
    return script


# -- Redis Cluster: a batch's two phases, recovery, exam results per shard ---------------

# The keys a shard's write locks while prepared: entities, pairs, remembered parcels.
LOCKED_LIB = """
local function locked_keys(u)
  local out = {}
  for _, part in ipairs({u[8][1], u[9][1], u[11][1]}) do
    for _, k in ipairs(part) do out[#out + 1] = k end
  end
  return out
end
local function release(tag, u, token)
  local locks = tag .. '@locks'
  for _, k in ipairs(locked_keys(u)) do
    if redis.call('HGET', locks, k) == token then redis.call('HDEL', locks, k) end
  end
end
-- 1: free; 0: refused (a stale read, a lock, a tombstone); -1: a batch of one of these
-- partitions is in flight (resolve it first)
local function admissible(tag, u, token, marks)
  for _, k in ipairs(marks) do
    local cur = redis.call('GET', k)
    if cur then
      if string.sub(cur, 1, 2) == 'p:' then return -1 end
      if cur == 'x:' .. token then return 0 end
    end
  end
  if not check(u) then return 0 end
  local locks = tag .. '@locks'
  for _, k in ipairs(locked_keys(u)) do
    local l = redis.call('HGET', locks, k)
    if l and l ~= token then return 0 end
  end
  return 1
end
"""

# KEYS[1] shard tag; ARGV: write, blobs, token, meta, partition marks (msgpack)
PREPARE_LUA = (
    APPLY_LIB
    + LOCKED_LIB
    + """
local tag, token = KEYS[1], ARGV[3]
local d = tag .. '@prepdata:' .. token
if redis.call('EXISTS', d) == 1 then return 1 end  -- sent again after a lost reply
local u, marks = columns(cmsgpack.unpack(ARGV[1])), cmsgpack.unpack(ARGV[5])
local ok = admissible(tag, u, token, marks)
if ok ~= 1 then return ok end
local locks = tag .. '@locks'
for _, k in ipairs(locked_keys(u)) do redis.call('HSET', locks, k, token) end
for _, k in ipairs(marks) do redis.call('SET', k, 'p:' .. token) end
redis.call('HSET', d, 'a', ARGV[1], 'b', ARGV[2], 'm', ARGV[4], 'p', ARGV[5])
redis.call('EXPIRE', d, 7 * 86400)
return 1
"""
)

# A batch that touches one shard only: prepare and commit in one call.
ONE_LUA = (
    APPLY_LIB
    + LOCKED_LIB
    + """
local tag, token = KEYS[1], ARGV[3]
local u, marks = columns(cmsgpack.unpack(ARGV[1])), cmsgpack.unpack(ARGV[5])
local ok = admissible(tag, u, token, marks)
if ok ~= 1 then return ok end
write(u, ARGV[2])
return 1
"""
)

# Finish a prepared shard (KEYS[1] shard tag; ARGV[1] token): with ``commit`` write it,
# in any case release its locks and marks. 1: done now; 0: nothing prepared under the token.
_FINISH = """
local tag, token = KEYS[1], ARGV[1]
local d = tag .. '@prepdata:' .. token
local a = redis.call('HGET', d, 'a')
if not a then return 0 end
local u = columns(cmsgpack.unpack(a))
if COMMIT then write(u, redis.call('HGET', d, 'b')) end
release(tag, u, token)
for _, k in ipairs(cmsgpack.unpack(redis.call('HGET', d, 'p'))) do
  if redis.call('GET', k) == 'p:' .. token then redis.call('DEL', k) end
end
redis.call('DEL', d)
return 1
"""
COMMIT_LUA = APPLY_LIB + LOCKED_LIB + _FINISH.replace("COMMIT", "true")
ABORT_LUA = APPLY_LIB + LOCKED_LIB + _FINISH.replace("COMMIT", "false")

# Recovery, per shard of a batch found in flight (KEYS[1] tag; ARGV: token, its partition
# marks, [[watermark key, new offset], ...]): 'prepared', 'committed', or else fenced with
# a tombstone so that a late prepare of that batch is refused: 'fenced'.
PROBE_LUA = """
local tag, token = KEYS[1], ARGV[1]
if redis.call('EXISTS', tag .. '@prepdata:' .. token) == 1 then return 'prepared' end
local done = true
for _, w in ipairs(cmsgpack.unpack(ARGV[3])) do
  if (tonumber(redis.call('GET', w[1])) or -1) < tonumber(w[2]) then done = false end
end
if done then return 'committed' end
for _, k in ipairs(cmsgpack.unpack(ARGV[2])) do
  local cur = redis.call('GET', k)
  if not cur or string.sub(cur, 1, 2) ~= 'p:' then
    redis.call('SET', k, 'x:' .. token, 'EX', 86400)
  end
end
return 'fenced'
"""

# Examination results of one shard (KEYS[1] tag; ARGV[1] msgpack [ttl, half-life,
# [[exam id, part, key, violation, at ms], ...]], part s(hipper), l (seller) or a(ddress)).
# -2 while a prepared batch holds one of the entities (retry shortly).
SHARD_EXAMS_LUA = (
    DECAY_LUA
    + ENTITY_LUA
    + RISK_COUNT_LUA
    + """
local tag = KEYS[1]
local u = cmsgpack.unpack(ARGV[1])
local ttl, hl, items = u[1], u[2], u[3]
local locks = tag .. '@locks'
for _, it in ipairs(items) do
  if it[2] ~= 'a' and it[2] ~= 'r' and redis.call('HGET', locks, it[3]) then return -2 end
end
local out, touched = {}, {}
for i, it in ipairs(items) do
  local mark = tag .. '@exam:' .. it[1] .. ':' .. it[2]
  if redis.call('SET', mark, '1', 'NX', 'EX', ttl) then
    local key, v, at = it[3], it[4], it[5]
    if it[2] == 'r' then
      risk_count(tag .. '@risk_counts', tag .. '@risk_names', key, v, at, touched)
    elseif it[2] == 'a' then
      decay_add(key, at, hl, {'rv'}, {1})
      redis.call('EXPIRE', key, ttl)
    else
      redis.call('HINCRBY', key, 'v', 1)
      redis.call('HINCRBY', key, 'exams', 1)
      redis.call('HINCRBY', key, 'violations', v)
      entity_exam(key, at, hl, v)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
risk_log(tag .. '@risk_log', tag .. '@risk_seq', touched)
return out
"""
)

# The learner (shard 0; KEYS[1] tag; ARGV: state ('' = none), expected version, new
# version, mark lifetime (s), history length, exam ids...). With a state: all or nothing,
# -1 unless the version is still the expected one and none of the ids was learned from.
# Marks each id.
LEARNER_LUA = (
    STORE_LEARNER
    + """
local tag = KEYS[1]
local learner, expected = ARGV[1], ARGV[2]
local lkey = tag .. '@learner'
if learner ~= '' then
  if (redis.call('HGET', lkey, 'version') or '0') ~= expected then return -1 end
  for a = 6, #ARGV do
    if redis.call('EXISTS', tag .. '@exam:' .. ARGV[a]) == 1 then return -1 end
  end
end
local out = {}
for a = 6, #ARGV do
  if redis.call('SET', tag .. '@exam:' .. ARGV[a], '1', 'NX', 'EX', tonumber(ARGV[4])) then
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if learner ~= '' then
  store_learner(lkey, ARGV[3], learner, tonumber(ARGV[5]))
end
return out
"""
)
