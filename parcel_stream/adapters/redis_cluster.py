"""State in Redis Cluster: the keys spread over shards, each batch applied atomically per
shard, all or nothing over the batch.

**Shards.** ``PARCEL_REDIS_SHARDS`` (default 16) hash tags, ``{ps.0}`` .. ``{ps.15}``
(a suffix is added to a tag where needed so that shard ``n`` hashes into the ``n``-th of
equal slot ranges: the shards spread evenly over the masters of any cluster whose masters
hold contiguous slot ranges). Every entity lives in the shard of a hash of its id:
``{ps.7}:shipper:S1``, ``{ps.3}:pid:P1``. The key scheme after the tag is the single-node
one (``state.py``). A partition's outbox lives in its *home* shard (the shard of
``topic:partition``); each shard keeps its own watermark per input partition.

**A batch's update** is split by shard and applied in two phases. *Prepare*, per shard, one
script: the shard's watermarks, versions and remembered parcels are still what the batch
read, no other batch holds a lock on its keys; then it locks them (``{ps.n}:locks``),
stores the shard's write (``{ps.n}:prepdata:{token}``) and marks each of the batch's
partitions as in flight (``{ps.n}:prep:{topic}:{partition}``). The home shards are
prepared first, then the others. If every shard prepared, *commit*, per shard: write,
unlock, clear the marks, the home shards last. If one refused, the prepared ones are
released and the batch is read and scored again, as on a single node.

**After a crash** between the phases, the next read of the partition finds its home shard
marked in flight and resolves the batch first: if every shard of it is prepared or
committed, the batch is committed (roll forward); otherwise every unprepared shard is
fenced (a tombstone refuses a late prepare of that batch) and the prepared ones are
released (roll back). Each shard's commit is idempotent, so resolving twice is harmless.

**Examination results** are counted per shard, each shard marking the exam id it applied
(``{ps.n}:exam:{exam id}:{s|l|a}``), so a result lands once on its shipper, seller and
address even when the call is retried; the learner (shard 0) marks the ids it learned from.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from parcel_stream.adapters.redis_lua import (
    ABORT_LUA,
    COMMIT_LUA,
    LEARNER_LUA,
    ONE_LUA,
    PREPARE_LUA,
    PROBE_LUA,
    SHARD_EXAMS_LUA,
    keys_in,
)
from parcel_stream.adapters.redis_store import (
    RedisReputationStore,
    parse_read,
    risk_spec,
    shipper_member,
)
from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState, encode_state
from parcel_stream.reputation import ExamDelta, Partition, ReputationUpdate, entity_columns
from parcel_stream.sequence import EntityTable, StoredState
from parcel_stream.state import (
    ADDRESS_SHIPPERS,
    ADDRESS_VIOLATIONS,
    EXAM,
    LANES,
    NORMS,
    PAIR,
    PREP,
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

log = logging.getLogger("parcel_stream.redis_cluster")
SLOTS = 16384
_PACK = msgspec.msgpack.Encoder()
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_UNPACK = msgspec.msgpack.Decoder()
_JSON = msgspec.json.Encoder()


@lru_cache(maxsize=64)
def shard_tags(prefix: str, shards: int) -> tuple[str, ...]:
    """The hash tag of each shard: ``{prefix.n}``, or ``{prefix.n.k}`` with the smallest
    ``k`` that puts it in the ``n``-th of ``shards`` equal slot ranges."""
    tags = []
    for n in range(shards):
        lo, hi = n * SLOTS // shards, (n + 1) * SLOTS // shards
        k = 0
        while True:
            tag = f"{prefix}.{n}" if k == 0 else f"{prefix}.{n}.{k}"
            if lo <= key_slot(tag.encode()) < hi or hi <= lo:
                break
            k += 1
        tags.append("{" + tag + "}")
    return tuple(tags)


@lru_cache(maxsize=1 << 18)
def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class _Shard:
    """The part of a batch's read that one shard serves, with each entity's position in
    the batch."""

    ship: list[int] = field(default_factory=list)
    sell: list[int] = field(default_factory=list)
    addr: list[int] = field(default_factory=list)
    pair: list[int] = field(default_factory=list)
    combo: list[int] = field(default_factory=list)
    parts: list[int] = field(default_factory=list)


def _put(dst: EntityTable, idx: list[int], src: EntityTable) -> None:
    if not idx:
        return
    dst.vals[idx] = src.vals
    dst.ver[idx] = src.ver
    dst.newest_day[idx] = src.newest_day
    dst.slot_day[idx] = src.slot_day
    dst.slot_count[idx] = src.slot_count


class RedisClusterStore(RedisReputationStore):
    """The Redis store over a Redis Cluster (``PARCEL_REDIS_CLUSTER=true``)."""

    def __init__(
        self,
        url: str,
        prefix: str = "ps",
        shards: int = 16,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        **kwargs: Any,
    ) -> None:
        self.shards = shards
        self.tags = shard_tags(prefix, shards)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.wait_timeouts = 0  # WAITs that returned before enough replicas acknowledged
        super().__init__(url, prefix=prefix, **kwargs)
        reg = self.client.register_script
        self._prepare = reg(keys_in(PREPARE_LUA))
        self._one = reg(keys_in(ONE_LUA))
        self._commit = reg(keys_in(COMMIT_LUA))
        self._abort = reg(keys_in(ABORT_LUA))
        self._probe = reg(keys_in(PROBE_LUA))
        self._cexams = reg(keys_in(SHARD_EXAMS_LUA))
        self._learner = reg(keys_in(LEARNER_LUA))

    def _connect(self, url: str, socket_timeout_s: float, options: dict[str, Any]) -> Any:
        # The cluster client keeps its own retries: after a failover it must find the
        # promoted replica (MOVED, refreshed slot map) before the worker's loop gives up.
        return RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            **options,
        )

    # -- where keys live ------------------------------------------------------------------

    def shard_of(self, ident: str) -> int:
        return _hash64(ident) % self.shards

    def tag_of(self, ident: str) -> str:
        return self.tags[self.shard_of(ident)]

    def home_of(self, part: Partition) -> int:
        return self.shard_of(f"{part[0]}:{part[1]}")

    def shipper_key(self, shipper_id: str) -> str:
        return SHIPPER.key(self.tag_of(shipper_id), shipper_id)

    def seller_key(self, seller: str) -> str:
        return SELLER.key(self.tag_of(seller), seller)

    def address_key(self, address: str) -> str:
        return f"{self.tag_of(address)}:{ADDRESS_SHIPPERS.segment}:{address}"

    def pair_key(self, pair: str) -> str:
        return PAIR.key(self.tag_of(pair), pair)

    def parcel_key(self, parcel_id: str) -> str:
        return REMEMBERED.key(self.tag_of(parcel_id), parcel_id)

    def examinable_key(self, parcel_id: str) -> str:
        return super().examinable_key(parcel_id).replace(self.prefix, self.tag_of(parcel_id), 1)

    def watermark_key(self, part: Partition, shard: int | None = None) -> str:
        tag = self.tags[self.home_of(part) if shard is None else shard]
        return WATERMARK.key(tag, f"{part[0]}:{part[1]}")

    def outbox_key(self, part: Partition) -> str:
        return super().outbox_key(part).replace(self.prefix, self.tags[self.home_of(part)], 1)

    def exam_key(self, exam_id: str) -> str:
        return EXAM.key(self.tags[0], exam_id)

    def learner_key(self) -> str:
        return super().learner_key().replace(self.prefix, self.tags[0], 1)

    def risk_hash(self, shard: int) -> str:
        return RISK.key(self.tags[shard])

    def risk_names(self, shard: int) -> str:
        return RISK_NAMES.key(self.tags[shard])

    def risk_log(self, shard: int) -> str:
        return RISK_LOG.key(self.tags[shard])

    def risk_seq(self, shard: int) -> str:
        return RISK_SEQ.key(self.tags[shard])

    def risk_shard_count(self) -> int:
        return self.shards

    def risk_shards(self, ids: U64) -> list[tuple[int, I64]]:
        shard = (ids % np.uint64(self.shards)).astype(np.int64)
        where = [(n, np.flatnonzero(shard == n)) for n in range(self.shards)]
        return [(n, w) for n, w in where if len(w)]

    async def _risk_script(self, script: Any, calls: list[tuple[int, list[Any]]]) -> list[Any]:
        return await self._eval(script, calls)

    def norms_key(self, part: Partition) -> tuple[int, str]:
        home = self.home_of(part)
        return home, NORMS.key(self.tags[home], f"{part[0]}:{part[1]}")

    def lanes_key(self, part: Partition) -> str:
        return LANES.key(self.tags[self.home_of(part)], f"{part[0]}:{part[1]}")

    def _marks(self, shard: int, parts: list[Partition]) -> list[str]:
        return [PREP.key(self.tags[shard], f"{t}:{p}") for t, p in parts]

    async def _eval(self, script: Any, calls: list[tuple[int, list[Any]]]) -> list[Any]:
        """Run ``script`` once per (shard, arguments), pipelined: one round trip per master.
        A master that lacks the script (a replica promoted since) gets it loaded and only
        those calls are sent again."""
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _attempt in range(3):
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                n, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, 1, self.tags[n], *args)
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, r in zip(todo, replies, strict=True):
                if isinstance(r, NoScriptError):
                    missing.append(i)
                elif isinstance(r, Exception):
                    raise r
                else:
                    out[i] = r
            if not missing:
                return out
            script.sha = await self.client.script_load(script.script)
            todo = missing
        raise RedisError("a Redis master keeps refusing to load the scripts")

    # -- reads ----------------------------------------------------------------------------

    async def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]:
        by_shard: dict[int, list[str]] = defaultdict(list)
        for pid in parcel_ids:
            by_shard[self.shard_of(pid)].append(pid)
        calls = [(n, [_PACK.encode([self.tags[n], pids])]) for n, pids in by_shard.items()]
        out = {}
        for pids, rows in zip(by_shard.values(), await self._eval(self._parcels, calls),
                              strict=True):  # fmt: skip
            out.update({p: bytes(r) for p, r in zip(pids, rows, strict=False) if r is not None})
        return out

    async def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]:
        """Each shard's part in one script call, pipelined per master; a batch of these
        partitions left in flight by a crash is resolved first."""
        for _ in range(10):
            pending = await self._in_flight(partitions)
            if not pending:
                return await self._read_shards(keys, partitions, combos)
            for token, home in pending:
                await self.resolve(token, home)
        raise RedisError("batches keep being left in flight on these partitions")

    async def _in_flight(self, partitions: list[Partition]) -> list[tuple[str, int]]:
        """Batches of these partitions prepared but not finished: (token, home shard)."""
        homes = [self.home_of(p) for p in partitions]
        pipe = self.client.pipeline(transaction=False)
        for h, p in zip(homes, partitions, strict=True):
            pipe.get(self._marks(h, [p])[0])
        out = []
        for h, raw in zip(homes, await pipe.execute(), strict=True):
            text = raw.decode() if isinstance(raw, bytes) else raw
            if text and text.startswith("p:"):
                out.append((text[2:], h))
        return list(dict.fromkeys(out))

    async def _read_shards(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None
    ) -> tuple[StoredState, dict[Partition, int]]:
        combos = combos if combos is not None else Combos.of(keys)
        pairs = combos.pairs()
        shards: dict[int, _Shard] = defaultdict(_Shard)
        for j, x in enumerate(keys.ids):
            shards[self.shard_of(x)].ship.append(j)
        for j, x in enumerate(keys.sellers):
            shards[self.shard_of(x)].sell.append(j)
        addr_shard = [self.shard_of(x) for x in keys.addresses]
        for j, n in enumerate(addr_shard):
            shards[n].addr.append(j)
        for j, x in enumerate(keys.pairs):
            shards[self.shard_of(x)].pair.append(j)
        for c, (a, _s) in enumerate(pairs):
            shards[addr_shard[a]].combo.append(c)
        for j, part in enumerate(partitions):
            shards[self.home_of(part)].parts.append(j)

        def payload(n: int, sh: _Shard) -> bytes:
            tag = self.tags[n]
            local = {a: k for k, a in enumerate(sh.addr)}
            flat_combos = [
                x for c in sh.combo
                for x in (local[pairs[c][0]] + 1, shipper_member(keys.ids[pairs[c][1]]))
            ]  # fmt: skip
            return _PACK.encode([
                tag, [keys.ids[j] for j in sh.ship], [keys.sellers[j] for j in sh.sell],
                [keys.addresses[j] for j in sh.addr], [keys.pairs[j] for j in sh.pair],
                flat_combos, [f"{partitions[j][0]}:{partitions[j][1]}" for j in sh.parts],
            ])  # fmt: skip

        flats = await self._eval(self._read, [(n, [payload(n, sh)]) for n, sh in shards.items()])
        replies = [
            parse_read(flat, len(sh.ship), len(sh.sell), len(sh.addr), len(sh.pair),
                       len(sh.combo), len(sh.parts))
            for sh, flat in zip(shards.values(), flats, strict=True)
        ]  # fmt: skip
        state = StoredState.empty(len(keys.ids), len(keys.sellers), len(keys.addresses),
                                  len(keys.pairs), len(pairs))  # fmt: skip
        marks: dict[Partition, int] = {}
        for sh, (got, wm) in zip(shards.values(), replies, strict=True):
            _put(state.shippers, sh.ship, got.shippers)
            _put(state.sellers, sh.sell, got.sellers)
            if sh.addr:
                state.address_count[sh.addr] = got.address_count
                state.address_t[sh.addr] = got.address_t
                state.address_rv[sh.addr] = got.address_rv
            if sh.pair:
                state.pairs[sh.pair] = got.pairs
                state.pair_ver[sh.pair] = got.pair_ver
            if sh.combo:
                state.member[sh.combo] = got.member
            for j, raw in zip(sh.parts, wm, strict=True):
                if raw is not None:
                    marks[partitions[j]] = int(raw)
        return state, marks

    # -- the batch's update ---------------------------------------------------------------

    def split(self, update: ReputationUpdate) -> dict[int, ReputationUpdate]:
        """The update's part in each shard it touches (every partition's home included)."""
        parts: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for kind, writes in (("shippers", update.shippers), ("sellers", update.sellers)):
            ws = entity_columns(writes)
            rows: dict[int, list[int]] = defaultdict(list)
            for j, eid in enumerate(ws.ids):
                rows[self.shard_of(eid)].append(j)
            for n, at in rows.items():
                parts[n][kind] = ws.take(at)  # type: ignore[assignment]
        for a, ids in update.addresses:
            parts[self.shard_of(a)]["addresses"].append((a, ids))
        for p in update.pairs:
            parts[self.shard_of(p.pair)]["pairs"].append(p)
        for x in update.parcels:
            parts[self.shard_of(x[0])]["parcels"].append(x)
        for pid, ref in update.examinable:
            parts[self.shard_of(pid)]["examinable"].append((pid, ref))
        for o in update.outbox:
            parts[self.home_of(o[0])]["outbox"].append(o)
        for part, raw in update.lanes:
            parts[self.home_of(part)]["lanes"].append((part, raw))
        for norm in update.norms:
            parts[self.home_of(norm[0])]["norms"].append(norm)
        for part in update.watermarks:
            parts[self.home_of(part)]["outbox"]  # noqa: B018 -- the home is always written
        return {
            n: ReputationUpdate(
                dict(update.watermarks), shippers=k["shippers"], addresses=k["addresses"],
                pairs=k["pairs"], examinable=k["examinable"], sellers=k["sellers"],
                outbox=k["outbox"], parcels=k["parcels"], lanes=k["lanes"], norms=k["norms"],
            )
            for n, k in parts.items()
        }  # fmt: skip

    def _args(self, n: int, u: ReputationUpdate, token: str, meta: bytes) -> list[Any]:
        parts = list(u.watermarks)
        loose = frozenset(p for p in parts if self.home_of(p) != n)
        write, blobs = self.apply_args(u, self.tags[n], loose)
        return [write, blobs, token, meta, _PACK.encode(self._marks(n, parts))]

    async def apply(self, update: ReputationUpdate) -> bool:
        """Apply all or nothing over the shards (prepare, then commit); False when a
        watermark, a version or a remembered parcel moved, or another batch holds a lock
        (the caller reads and scores again)."""
        if update.is_empty():
            return True
        ok = True
        if update.watermarks:
            ok = await self._apply_shards(replace(update, prune={}))
        if ok and update.prune:
            pipe = self.client.pipeline(transaction=False)
            for part, offset in update.prune.items():
                pipe.zremrangebyscore(self.outbox_key(part), "-inf", offset)
            await pipe.execute()
        return ok

    async def _apply_shards(self, update: ReputationUpdate) -> bool:
        split = self.split(update)
        token = uuid.uuid4().hex
        homes = sorted({self.home_of(p) for p in update.watermarks})
        others = sorted(n for n in split if n not in homes)
        offsets = [[f"{t}:{p}", new] for (t, p), (_exp, new) in update.watermarks.items()]
        meta = _PACK.encode([homes + others, offsets])
        args = {n: self._args(n, u, token, meta) for n, u in split.items()}
        if len(split) == 1:
            (n,) = split
            (one,) = await self._eval(self._one, [(n, args[n])])
            return await self._settled(int(one), update, [n])
        prepared: list[int] = []
        for group in (homes, others):
            res = await self._eval(self._prepare, [(n, args[n]) for n in group])
            prepared += [n for n, r in zip(group, res, strict=True) if int(r) == 1]
            worst = min(int(r) for r in res) if res else 1
            if worst != 1:
                await self._release(token, prepared, homes)
                return await self._settled(worst, update, [])
        await self._finish(token, others, homes)
        return await self._settled(1, update, homes + others)

    async def _settled(self, res: int, update: ReputationUpdate, shards: list[int]) -> bool:
        if res == -1:  # a batch of one of these partitions was left in flight: resolve it
            for token, home in await self._in_flight(list(update.watermarks)):
                await self.resolve(token, home)
        if res == 1 and self.wait_replicas > 0:
            await self._wait(shards)
        return res == 1

    async def _release(self, token: str, prepared: list[int], homes: list[int]) -> None:
        rest = [n for n in prepared if n not in homes]
        for group in (rest, [n for n in prepared if n in homes]):
            if group:
                await self._eval(self._abort, [(n, [token]) for n in group])

    async def _finish(self, token: str, others: list[int], homes: list[int]) -> None:
        for group in (others, homes):  # the homes last: their mark is the batch's record
            if group:
                await self._eval(self._commit, [(n, [token]) for n in group])

    async def resolve(self, token: str, home: int) -> str:
        """Finish a batch found in flight: committed when every shard of it was prepared
        (or committed), released otherwise. Returns 'committed' or 'released'."""
        raw = await self.client.hget(PREPDATA.key(self.tags[home], token), "m")
        if raw is None:  # the mark outlived its batch: nothing to finish
            return "released"
        shards, offsets = _UNPACK.decode(raw)
        partitions = [(str(x[0]).rsplit(":", 1)[0], int(str(x[0]).rsplit(":", 1)[1]))
                      for x in offsets]  # fmt: skip
        homes = sorted({self.home_of(p) for p in partitions})
        states = await self._eval(self._probe, [
            (n, [token, _PACK.encode(self._marks(n, partitions)),
                 _PACK.encode([[self.watermark_key(p, n), str(x[1])]
                               for p, x in zip(partitions, offsets, strict=True)])])
            for n in shards
        ])  # fmt: skip
        states = [s.decode() if isinstance(s, bytes) else s for s in states]
        others = [n for n in shards if n not in homes]
        if all(s in ("prepared", "committed") for s in states):
            await self._finish(token, others, homes)
            log.warning("a batch left in flight by a crash was committed (%d shards)", len(shards))
            return "committed"
        prepared = [n for n, s in zip(shards, states, strict=True) if s == "prepared"]
        await self._release(token, prepared, homes)
        log.warning("a batch left in flight by a crash was released (%d shards)", len(shards))
        return "released"

    async def _wait(self, shards: list[int]) -> None:
        """``WAIT`` on each written shard's master for ``wait_replicas`` replicas."""
        nodes = {self.client.get_node_from_key(self.tags[n]).name: self.tags[n] for n in shards}
        got = [
            await self.client.execute_command(
                "WAIT", self.wait_replicas, self.wait_timeout_ms,
                target_nodes=self.client.get_node_from_key(tag),
            )
            for tag in nodes.values()
        ]  # fmt: skip
        short = sum(1 for g in got if int(g) < self.wait_replicas)
        if short:
            self.wait_timeouts += short
            self.on_wait_short(short)
            log.warning("%d Redis masters acknowledged a write to fewer than %d replicas in "
                        "%d ms", short, self.wait_replicas, self.wait_timeout_ms)  # fmt: skip

    # -- examination results --------------------------------------------------------------

    async def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None:
        """Each result counted once on its shipper, seller and address (per-shard marks),
        then learned from, all or nothing, by the learner (None when its version moved)."""
        by_shard: dict[int, list[list[Any]]] = defaultdict(list)
        primary: dict[int, tuple[int, int]] = {}  # delta -> (shard, item) of its shipper
        for i, d in enumerate(deltas):
            v, at = int(d.violation), d.examined_ts_ms
            n = self.shard_of(d.shipper_id)
            primary[i] = (n, len(by_shard[n]))
            by_shard[n].append([d.exam_id, "s", self.shipper_key(d.shipper_id), v, at])
            if d.seller:
                by_shard[self.shard_of(d.seller)].append(
                    [d.exam_id, "l", self.seller_key(d.seller), v, at]
                )
            if d.violation:
                akey = ADDRESS_VIOLATIONS.key(self.tag_of(d.address), d.address)
                by_shard[self.shard_of(d.address)].append([d.exam_id, "a", akey, v, at])
            if d.risk is not None and d.risk_weight > 0:  # the learned keys, per shard
                keys_of: dict[int, list[int]] = defaultdict(list)
                for k in d.risk.ids:
                    keys_of[k % self.shards].append(k)
                for n, ks in keys_of.items():
                    spec = risk_spec(d, self.risk_half_life_ms, ks)
                    by_shard[n].append([d.exam_id, "r", spec, v, at])
        fresh = await self._exams_shards(by_shard)
        ids = [d.exam_id for d in deltas]
        if learner is None:
            args: list[str | bytes] = ["", "", "", str(self.exam_ttl_s), str(self.learner_keep),
                                       *ids]  # fmt: skip
        else:
            state = learner[1]
            args = [encode_state(state), str(learner[0]), str(state.version),
                    str(self.exam_ttl_s), str(self.learner_keep), *ids]  # fmt: skip
        (res,) = await self._eval(self._learner, [(0, args)])
        if isinstance(res, int) and res < 0:
            return None
        if learner is not None:
            return [True] * len(deltas)
        return [bool(fresh[n][k]) for n, k in (primary[i] for i in range(len(deltas)))]

    async def _exams_shards(self, by_shard: dict[int, list[list[Any]]]) -> dict[int, list[int]]:
        """Each shard's results (per item: 1 applied now, 0 applied before); a shard whose
        entities a prepared batch holds is tried again shortly."""
        todo = {
            n: _PACK.encode([self.exam_ttl_s, float(self.half_life_ms), items])
            for n, items in by_shard.items()
        }
        out: dict[int, list[int]] = {}
        deadline = time.monotonic() + 30
        pause = 0.005
        while todo:
            shards = list(todo)
            replies = await self._eval(self._cexams, [(n, [todo[n]]) for n in shards])
            for n, res in zip(shards, replies, strict=True):
                if not (isinstance(res, int) and res == -2):
                    out[n] = [int(x) for x in res]
                    del todo[n]
            if todo:
                if time.monotonic() > deadline:  # the locks of a batch left by a crash:
                    # its partition's next read resolves it
                    raise RedisError("exam results wait on a batch left in flight")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        return out

    async def close(self) -> None:
        await self.client.aclose()
