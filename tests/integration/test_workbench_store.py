"""The workbench's case store and users, on SQLite and on a real PostgreSQL server (started
by the tests, Debian's ``postgresql``): holds become cases idempotently, the queue pages by
keyset in both sorts with its filters, the status machine refuses what it must, a double
submit records one outcome, and sign-in is throttled."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from parcel_stream.adapters.workbench import devpg
from parcel_stream.adapters.workbench.auth import MAX_FAILURES, AuthError, Users, csrf_ok
from parcel_stream.adapters.workbench.cases import CaseError, CaseStore, QueueFilter
from parcel_stream.adapters.workbench.db import connect, migrate

EXAMPLE = json.loads(Path("schemas/examples/hold.v1.json").read_text())
T0 = 1_790_000_000_000


def hold(pid: str, hub: str = "CVG", score: float = 50.0, prob: float | None = None,
         source: str = "m/0/1", at: int = T0, codes: tuple[str, ...] = ("HIGH_RISK_HS",),
         shipper: str = "SHP1", selection: str = "risk") -> bytes:  # fmt: skip
    doc = dict(EXAMPLE, parcel_id=pid, hub=hub, score=score, probability=prob, source=source,
               decision_ts_ms=at, shipper_id=shipper, selection=selection,
               reasons=[{"code": c, "text": c.lower(), "rule_weight": 10.0} for c in codes])  # fmt: skip
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def postgres() -> Iterator[devpg.DevPostgres]:
    pg = devpg.start()
    try:
        yield pg
    finally:
        devpg.stop(pg)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = connect(f"sqlite:///{tmp_path / 'cases.db'}")
    else:
        pg: devpg.DevPostgres = request.getfixturevalue("postgres")
        assert devpg.alive(pg), "the test PostgreSQL server died"
        name = "t" + uuid.uuid4().hex[:10]
        admin = connect(pg.url)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        eng = connect(pg.url.rsplit("/", 1)[0] + "/" + name)
    assert migrate(eng) == [1]
    yield eng
    eng.dispose()


def test_migrations_apply_once(engine: Engine) -> None:
    assert migrate(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_migrations")).scalar() == 1


def test_a_hold_becomes_one_case_and_an_amendment_updates_it(engine: Engine) -> None:
    store = CaseStore(engine, sla_ms=3_600_000)
    got = store.ingest([hold("P1"), hold("P2"), hold("P1")])
    assert (got.new, got.updated, got.unchanged) == (2, 0, 0)
    again = store.ingest([hold("P1"), hold("P2")])  # redelivered
    assert (again.new, again.updated, again.unchanged) == (0, 0, 2)
    store.claim("P1", "ann")
    amended = store.ingest([hold("P1", score=90.0, source="m/0/7")])
    assert (amended.new, amended.updated) == (0, 1)
    case = store.case("P1")
    assert case is not None and case.score == 90.0 and case.source == "m/0/7"
    assert case.status == "claimed" and case.assignee == "ann"  # kept
    assert case.due_ts_ms == T0 + 3_600_000
    assert json.loads(case.hold)["parcel_id"] == "P1"


def test_the_queue_pages_by_keyset_in_both_orders_with_filters(engine: Engine) -> None:
    store = CaseStore(engine)
    holds = [hold(f"P{i:03d}", hub="CVG" if i % 3 else "LEJ", score=float(i % 7) * 10,
                  prob=None if i % 2 else (i % 11) / 11, at=T0 + (i * 7919) % 1000,
                  codes=("HIGH_RISK_HS", "NEW_SHIPPER") if i % 4 == 0 else ("NEW_SHIPPER",),
                  selection="random" if i % 10 == 0 else "risk", shipper=f"S{i % 5}")
             for i in range(120)]  # fmt: skip
    store.ingest(holds)
    store.claim("P003", "ann")
    for sort, key in (("risk", lambda c: (-risk(c), c.parcel_id)),
                      ("age", lambda c: (c.held_ts_ms, c.parcel_id))):  # fmt: skip
        seen, cursor = [], ""
        while True:
            page = store.queue(QueueFilter(hubs=["CVG"], sort=sort), cursor, limit=7)
            seen += page.cases
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert len(seen) == 80 and len({c.parcel_id for c in seen}) == 80
        assert seen == sorted(seen, key=key)
        assert {c.hub for c in seen} == {"CVG"}
    everything = store.queue(QueueFilter(hubs=None), limit=500).cases
    assert len(everything) == 120
    high = store.queue(QueueFilter(hubs=None, reason="HIGH_RISK_HS"), limit=500).cases
    assert len(high) == 30 and all("HIGH_RISK_HS" in c.reason_codes for c in high)
    random = store.queue(QueueFilter(hubs=None, selection="random"), limit=500).cases
    assert {c.parcel_id for c in random} == {f"P{i:03d}" for i in range(0, 120, 10)}
    claimed = store.queue(QueueFilter(hubs=None, statuses=("claimed",)), limit=500).cases
    assert [c.parcel_id for c in claimed] == ["P003"]
    shipper = store.queue(QueueFilter(hubs=None, shipper="S2"), limit=500).cases
    assert len(shipper) == 24
    assert store.queue(QueueFilter(hubs=[]), limit=5).cases == []
    with pytest.raises(CaseError, match="not valid"):
        store.queue(QueueFilter(hubs=None), cursor="garbage")


def risk(c: object) -> float:
    p, s = c.probability, c.score  # type: ignore[attr-defined]
    return float(p if p is not None else s / 100.0)


def test_counts_oldest_and_overdue_per_hub(engine: Engine) -> None:
    store = CaseStore(engine, sla_ms=1000)
    store.ingest([hold("A", hub="CVG", at=T0), hold("B", hub="CVG", at=T0 + 5000),
                  hold("C", hub="LEJ", at=T0 + 100)])  # fmt: skip
    store.claim("A", "ann")
    counts = {c.hub: c for c in store.counts(None, at_ms=T0 + 3000)}
    assert counts["CVG"].by_status == {"new": 1, "claimed": 1} and counts["CVG"].open == 2
    assert counts["CVG"].oldest_open_ts_ms == T0 and counts["CVG"].overdue == 1
    assert counts["LEJ"].overdue == 1 and counts["LEJ"].oldest_open_ts_ms == T0 + 100
    assert [c.hub for c in store.counts(["LEJ"])] == ["LEJ"]


def test_status_machine_double_submit_reopen_and_outbox(engine: Engine) -> None:
    store = CaseStore(engine)
    store.ingest([hold("P1", shipper="S9"), hold("P2", shipper="S9")])
    store.claim("P1", "ann")
    with pytest.raises(CaseError, match="ann has claimed it"):
        store.claim("P1", "bob")
    store.assign("P1", "bob", by="sue")
    assert store.case("P1").assignee == "bob"  # type: ignore[union-attr]
    exam, now = store.record("P1", 0, "seized", "counterfeit", 120.0, "fake watches", "bob")
    assert (exam, now) == ("P1/0", True)
    assert store.record("P1", 0, "seized", "counterfeit", 120.0, "fake watches", "bob") == (
        "P1/0",
        False,
    )  # the double-clicked submit records nothing more
    assert len(store.outcomes_of("P1")) == 1
    assert store.case("P1").status == "examined"  # type: ignore[union-attr]
    with pytest.raises(CaseError, match="the case is examined"):
        store.claim("P1", "ann")
    assert [o.exam_id for o in store.unsent()] == ["P1/0"]
    store.mark_sent(["P1/0"])
    assert store.unsent() == [] and store.case("P1").status == "closed"  # type: ignore[union-attr]
    with pytest.raises(CaseError, match="say why"):
        store.reopen("P1", " ", by="sue")
    store.reopen("P1", "wrong finding", by="sue")
    case = store.case("P1")
    assert case is not None and case.status == "claimed" and case.revision == 1
    with pytest.raises(CaseError, match="reopened after this form was shown"):
        store.record("P1", 0, "clean", "none", 0.0, "", "bob")  # a form from before
    assert store.record("P1", 1, "violation", "undervaluation", 0.0, "", "bob") == ("P1/1", True)
    store.record("P2", 0, "clean", "none", 0.0, "", "ann")
    history = store.shipper_history("S9")
    assert [(c.parcel_id, o.exam_id) for c, o in history][0][1] in {"P2/0", "P1/1"}
    assert len(history) == 3
    with pytest.raises(CaseError, match="no held parcel"):
        store.claim("nope", "ann")
    actions = [a["action"] for a in store.audit_log("P1")]
    assert actions[:2] == ["recorded outcome", "reopened"] and "claimed" in actions


def test_users_sessions_and_throttling(engine: Engine) -> None:
    users = Users(engine)
    users.add("ann", "correct horse battery", "officer", ["CVG"])
    users.add("sue", "supervisor secret 1", "supervisor", [])
    with pytest.raises(AuthError, match="exists already"):
        users.add("ann", "another password", "officer", ["CVG"])
    with pytest.raises(AuthError, match="at least one hub"):
        users.add("bob", "a long password", "officer", [])
    with pytest.raises(AuthError, match="role"):
        users.add("bob", "a long password", "clerk", ["CVG"])
    with pytest.raises(AuthError, match="at least 10"):
        users.add("bob", "short", "analyst", [])
    token, session = users.sign_in("ann", "correct horse battery", "10.0.0.1")
    assert session.user.hubs == ("CVG",) and users.session(token) is not None
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, None)
    assert not csrf_ok(session, "forged")
    users.sign_out(token)
    assert users.session(token) is None
    for _ in range(MAX_FAILURES):
        with pytest.raises(AuthError, match="wrong user name or password"):
            users.sign_in("ann", "wrong", "10.0.0.2")
    with pytest.raises(AuthError, match="too many failed sign-ins"):
        users.sign_in("ann", "correct horse battery", "10.0.0.3")  # right, but throttled
    token2, _ = users.sign_in("sue", "supervisor secret 1", "10.0.0.4")
    users.set_disabled("sue")
    assert users.session(token2) is None
    with pytest.raises(AuthError, match="wrong user name or password"):
        users.sign_in("sue", "supervisor secret 1", "10.0.0.5")
    with pytest.raises(AuthError, match="wrong user name or password"):
        users.sign_in("nobody", "whatever it is", "10.0.0.6")
