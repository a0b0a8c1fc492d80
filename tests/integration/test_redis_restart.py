"""Redis killed (SIGKILL) mid-stream and restarted from its append-only file: the worker
backs off, resumes by itself when Redis is back; every parcel decided exactly once and
the reputation counts exact, as the documented production setting
(``appendonly yes``, ``appendfsync always``) promises."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import orjson
import pytest

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.demo import running_worker
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision
from parcel_stream.settings import Settings
from tests.integration.test_end_to_end import metric


class PersistentRedis:
    """A redis-server of this test's own, with AOF on, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = devstack.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [devstack.redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not devstack._redis_ping(self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    r = PersistentRedis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        if r.proc is not None and r.proc.poll() is None:
            r.kill()


def test_redis_killed_and_restarted_mid_stream(
    settings: Settings, own_redis: PersistentRedis, tmp_path: Path
) -> None:
    s = settings.replace(redis_url=f"redis://127.0.0.1:{own_redis.port}/0")
    docs = [d for d, _ in generate(FeedConfig(parcels=3000, seed=29, shippers=300))]
    producer = make_producer(s.kafka_bootstrap, linger_ms=0)

    def offer(start: int, stop: int) -> None:  # ~600 parcels/s, batch and single records
        for i in range(start, stop, 100):
            chunk = [orjson.dumps(d) for d in docs[i : i + 100]]
            if (i // 100) % 2:
                for d, v in zip(docs[i : i + 100], chunk, strict=True):
                    producer.send(s.topic_manifests, key=d["shipper"]["id"].encode(), value=v)
            else:
                producer.send(s.topic_manifests, value=b"\n".join(chunk))
            producer.flush()
            time.sleep(0.15)

    with running_worker(s, tmp_path) as worker:
        offer(0, 100)  # warm-up: the worker scores before the fault
        read_all(s.kafka_bootstrap, [s.topic_decisions], lambda g: bool(g[s.topic_decisions]), 60)
        sender = threading.Thread(target=offer, args=(100, len(docs)))
        sender.start()
        time.sleep(0.5)
        own_redis.kill()  # the process dies; connections are refused until it is back
        time.sleep(4.0)
        own_redis.start()  # from its append-only file, on the same port
        sender.join()

        def done(g: dict[str, list[tuple[bytes | None, bytes]]]) -> bool:
            return sum(v.count(b"\n") + 1 for _k, v in g[s.topic_decisions]) >= len(docs)

        got = read_all(s.kafka_bootstrap, [s.topic_decisions], done, 120)
        errors = metric(s.metrics_port, "parcel_stream_errors_total{")
        redis_up = metric(s.metrics_port, "parcel_stream_redis_up")
        assert worker.poll() is None
    producer.close()

    dec = msgspec.json.Decoder(Decision)
    decisions = [dec.decode(x) for _k, v in got[s.topic_decisions] for x in v.split(b"\n")]
    counts = Counter(d.parcel_id for d in decisions)
    assert set(counts) == {d["parcel_id"] for d in docs} and max(counts.values()) == 1
    assert errors.get('parcel_stream_errors_total{component="redis"}', 0) >= 1
    assert redis_up.get("parcel_stream_redis_up") == 1.0  # recovered by itself

    per_shipper = Counter(d["shipper"]["id"] for d in docs)

    async def check() -> None:
        store = RedisReputationStore.from_settings(s)
        try:
            for sid, n in per_shipper.items():
                st = await store.shipper(sid)
                assert st is not None and st.seen == n, (sid, st, n)
        finally:
            await store.close()

    asyncio.run(check())
