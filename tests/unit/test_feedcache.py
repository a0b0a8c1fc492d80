"""The backtest's columnar cache: a backtest read from it decides exactly as one that parses
the feed, for any rule set, with the learned model and exam feedback too; what it loads
is what the parse gives; a changed feed or limit is a new entry; an interrupted run
leaves none."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from parcel_stream.backtest import BacktestRun, run_backtest
from parcel_stream.cli import main
from parcel_stream.feed import RawRecord, read_feed
from parcel_stream.feedcache import CacheError, FeedCache
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.parse import LazyManifests, Limits
from parcel_stream.pipeline import prepare
from parcel_stream.risk import RiskConfig
from parcel_stream.rules import RuleSet, default_ruleset
from parcel_stream.settings import Settings

CHUNK = 256 * 1024  # many chunks
Feed = tuple[Path, dict[str, str | None]]
GROUP = 200


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """Generated parcels with what real feeds carry too: malformed lines, exact resends
    (repeats) and corrected resends (amendments)."""
    lines, labels = [], {}
    docs = list(generate(FeedConfig(parcels=5_000, seed=11)))
    for n, (doc, label) in enumerate(docs):
        labels[doc["parcel_id"]] = label
        lines.append(orjson.dumps(doc))
        if n % 97 == 0:
            lines.append(b'{"parcel_id": "BROKEN-%d", "items": [' % n)
        if n % 53 == 0 and n:
            lines.append(orjson.dumps(docs[n - 7][0]))  # a resend
        if n % 71 == 0 and n:
            lines.append(orjson.dumps({**docs[n - 3][0], "declared_value": 1.0}))  # corrected
    path = tmp_path_factory.mktemp("feed") / "manifests.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, labels


def _run(path: Path, cache_dir: Path | None, ruleset: RuleSet | None = None, **kw: Any
         ) -> BacktestRun:  # fmt: skip
    limits = Limits()
    entry = (FeedCache(cache_dir, path, limits, CHUNK, GROUP).entry()
             if cache_dir is not None else None)  # fmt: skip
    return run_backtest(read_feed(path, group_lines=GROUP), ruleset or RS, limits=limits,
                        chunk_bytes=CHUNK, cache=entry, **kw)  # fmt: skip


RS = default_ruleset(Settings())


def _same(a: BacktestRun, b: BacktestRun) -> None:
    assert a.parcel_ids == b.parcel_ids and a.parcels > 4_000
    assert a.scores == b.scores and a.masks == b.masks and a.lanes == b.lanes
    assert a.rejections == b.rejections and sum(a.rejections.values()) > 0


def test_a_backtest_read_from_the_cache_decides_as_the_parse_does(feed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, _labels = feed
    plain = _run(path, None)
    first = _run(path, tmp_path)  # parses and writes the entry
    entries = list(tmp_path.glob("*.cache"))
    assert len(entries) == 1 and not list(tmp_path.glob("*.tmp"))
    stamp = entries[0].stat().st_mtime_ns
    again = _run(path, tmp_path)  # reads it
    assert entries[0].stat().st_mtime_ns == stamp
    _same(plain, first)
    _same(plain, again)
    # another rule set, with another split threshold: the pairs are rebuilt for it
    strict = replace(RS, threshold_usd=RS.threshold_usd / 4, hold_score=RS.hold_score - 15,
                     version="strict")  # fmt: skip
    _same(_run(path, None, ruleset=strict), _run(path, tmp_path, ruleset=strict))
    assert _run(path, tmp_path, ruleset=strict).lanes != plain.lanes


def test_a_feed_parsed_in_other_processes_decides_as_one_process_and_caches_the_same(
    feed: Feed, tmp_path: Path
) -> None:
    path, labels = feed
    kw: dict[str, Any] = {"exam_outcomes": labels, "risk": RiskConfig(mode="on")}
    plain = _run(path, None, **kw)
    parallel = _run(path, tmp_path, workers=3, **kw)  # writes the cache from their parses
    _same(plain, parallel)
    assert parallel.learner is not None and plain.learner is not None
    assert parallel.learner.version == plain.learner.version
    _same(plain, _run(path, tmp_path, **kw))  # and reads it back
    one = tmp_path / "one"
    _run(path, one)
    (a,), (b,) = tmp_path.glob("*.cache"), one.glob("*.cache")
    assert a.read_bytes() == b.read_bytes()  # the same entry, byte for byte


def test_the_learned_model_and_exam_feedback_decide_the_same_from_the_cache(feed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, labels = feed
    kw = {"exam_outcomes": labels, "risk": RiskConfig(mode="on")}
    plain = _run(path, None, **kw)
    _run(path, tmp_path, **kw)
    cached = _run(path, tmp_path, **kw)
    _same(plain, cached)
    assert plain.learner is not None and cached.learner is not None
    assert plain.learner.version == cached.learner.version > 0


def test_the_cache_gives_what_the_parse_gives(feed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path, _labels = feed
    _run(path, tmp_path)
    (entry_path,) = tmp_path.glob("*.cache")
    entry = FeedCache(tmp_path, path, Limits(), CHUNK, GROUP).entry()
    assert entry.path == entry_path
    records = [r.to_in_record() for r in read_feed(path, group_lines=GROUP)]
    for n, r in enumerate(records):
        r.partition, r.offset = 0, n
    loaded = list(entry.read(Limits(), RS.split_min_usd))
    assert len(loaded) > 5
    at = 0
    for got in loaded:
        chunk = records[at : at + len(got.records)]
        at += len(got.records)
        now = max(r.timestamp_ms for r in chunk)
        want = prepare(chunk, Limits(), now, RS.split_min_usd)
        assert [(r.topic, r.partition, r.offset, r.timestamp_ms) for r in got.records] == [
            (r.topic, r.partition, r.offset, r.timestamp_ms) for r in chunk
        ]
        assert got.partitions == want.partitions and got.hashes == want.hashes
        assert got.parsed.sources == want.parsed.sources
        assert got.parsed.record_index == want.parsed.record_index
        assert got.parsed.rejections == want.parsed.rejections
        for f in fields(want.columns):
            a, b = getattr(got.columns, f.name), getattr(want.columns, f.name)
            assert np.array_equal(a, b) if isinstance(b, np.ndarray) else a == b, f.name
        for f in fields(want.shippers):
            a, b = getattr(got.shippers, f.name), getattr(want.shippers, f.name)
            assert np.array_equal(a, b) if isinstance(b, np.ndarray) else a == b, f.name
        lazy = got.parsed.manifests
        assert isinstance(lazy, LazyManifests) and not lazy.decoded
        assert list(lazy) == list(want.parsed.manifests) and lazy.decoded
    assert at == len(records)


def test_a_changed_feed_or_limit_is_a_new_entry_and_an_interrupted_run_leaves_none(
    feed: Feed, tmp_path: Path
) -> None:
    path, _labels = feed
    key = FeedCache(tmp_path, path, Limits(), CHUNK, GROUP).key
    assert FeedCache(tmp_path, path, Limits(), CHUNK, GROUP).key == key
    assert FeedCache(tmp_path, path, Limits(max_parcels_per_record=50), CHUNK, GROUP).key != key
    assert FeedCache(tmp_path, path, Limits(), CHUNK * 2, GROUP).key != key
    other = tmp_path / "other.ndjson"
    raw = path.read_bytes()
    other.write_bytes(raw[:-2] + b" \n")  # one byte changed: a new entry
    assert FeedCache(tmp_path, other, Limits(), CHUNK, GROUP).key != key

    def broken() -> Iterator[RawRecord]:
        for n, rec in enumerate(read_feed(path, group_lines=GROUP)):
            if n == 12:
                raise OSError("the disk went away")
            yield rec

    root = tmp_path / "cache"
    entry = FeedCache(root, path, Limits(), CHUNK, GROUP).entry()
    with pytest.raises(OSError, match="went away"):  # after several chunks were written
        run_backtest(broken(), RS, chunk_bytes=CHUNK, cache=entry)
    assert not entry.exists and not list(root.iterdir())


def test_a_damaged_entry_is_named_wherever_the_damage_is(feed: Feed, tmp_path: Path) -> None:
    """Cut short at a chunk's end (no trailer), a byte changed in a chunk's columns, or in
    the records' bytes that only the learned model's keys read: each stops the run with
    CacheError, never a silently shorter or different backtest."""
    path, labels = feed
    _run(path, tmp_path)
    (entry_path,) = tmp_path.glob("*.cache")
    good = entry_path.read_bytes()
    entry = FeedCache(tmp_path, path, Limits(), CHUNK, GROUP).entry()
    assert len(list(entry.read(Limits(), RS.split_min_usd))) > 5
    first = int.from_bytes(good[:8], "little")  # the first chunk's columns frame
    values_at = 8 + first + 16 + 8  # the first chunk's records' bytes
    for damaged in (good[:-16], good[:20] + bytes([good[20] ^ 1]) + good[21:],
                    good[:values_at + 5] + bytes([good[values_at + 5] ^ 1])
                    + good[values_at + 6:]):  # fmt: skip
        entry_path.write_bytes(damaged)
        with pytest.raises(CacheError, match="damaged"):
            _run(path, tmp_path, exam_outcomes=labels, risk=RiskConfig(mode="on"))


def test_the_cli_reads_the_cache_the_second_time_and_names_a_bad_cache_dir(
    feed: Feed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _labels = feed
    args = ["backtest", str(path), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "written to the cache" in first.err
    assert main(args) == 0
    second = capsys.readouterr()
    assert "read from the cache" in second.err

    def lanes(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if "throughput" not in ln]

    assert lanes(first.out) == lanes(second.out)
    (entry,) = (tmp_path / "c").glob("*.cache")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # damaged on disk
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and str(entry) in err and "--no-cache" in err
    assert "Traceback" not in err
    assert main(["backtest", str(path), "--no-cache"]) == 0
    assert "cache" not in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["backtest", str(path), "--cache-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "--cache-dir" in err and "--no-cache" in err and "Traceback" not in err
