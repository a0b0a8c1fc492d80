"""Redis unreachable mid-stream, two ways: the process frozen (SIGSTOP: calls time out),
and the process killed (SIGKILL) and restarted from its append-only file on the same
port (``appendfsync always``, as documented for production). The worker stops
consuming, retries, resumes by itself; no parcel lost, none decided twice, reputation
counts exact."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import orjson
import pytest

from benchmarks.reliability.harness import OwnRedis
from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision
from parcel_stream.settings import Settings
from tests.integration.conftest import alive, metrics_port, run_worker
from tests.integration.test_end_to_end import metric


@pytest.mark.parametrize("fault", ["frozen", "killed-and-restarted"])
def test_redis_outage_mid_stream(
    fault: str, stack: devstack.StackInfo, settings: Settings, tmp_path: Path
) -> None:
    own = None
    s = settings
    if fault == "killed-and-restarted":
        own = OwnRedis(tmp_path / "redis")
        own.start()
        s = settings.replace(redis_url=own.url)
    docs = [d for d, _ in generate(FeedConfig(parcels=3000, seed=23, shippers=300))]
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

    try:
        with run_worker(s, tmp_path) as worker:
            # warm-up: the worker has joined and scores before the outage starts
            offer(0, 100)
            read_all(s.kafka_bootstrap, [s.topic_decisions],
                     lambda g: bool(g[s.topic_decisions]), 60, alive(worker, tmp_path))  # fmt: skip
            sender = threading.Thread(target=offer, args=(100, len(docs)))
            sender.start()
            time.sleep(0.5)
            # while parcels keep arriving, Redis stops answering for longer than its timeout
            if own is not None:
                own.kill()
                time.sleep(4.0)
                own.start()
            else:
                os.kill(stack.redis_pid, signal.SIGSTOP)
                try:
                    time.sleep(8.0)
                finally:
                    os.kill(stack.redis_pid, signal.SIGCONT)
            sender.join()

            def done(g: dict[str, list[tuple[bytes | None, bytes]]]) -> bool:
                return sum(v.count(b"\n") + 1 for _k, v in g[s.topic_decisions]) >= len(docs)

            got = read_all(s.kafka_bootstrap, [s.topic_decisions], done, 120,
                           alive(worker, tmp_path))  # fmt: skip
            port = metrics_port(s, worker, tmp_path)
            errors = metric(port, "parcel_stream_errors_total{")
            redis_up = metric(port, "parcel_stream_redis_up")
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
    finally:
        if own is not None:
            own.kill()
