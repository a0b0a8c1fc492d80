"""The case store: one case per held parcel, its status, assignee and outcomes.

A hold becomes a case idempotently by parcel id: the same hold delivered again changes
nothing; a hold from another decision of the same parcel (an amendment) updates the case's
details and keeps its status and assignee. Statuses go new -> claimed -> examined -> closed:
``examined`` when an officer records the outcome, ``closed`` once the exam result is on the
exam-results topic. A supervisor can reopen a case (with a reason); its revision goes up,
so the next outcome gets a new exam id. An outcome's exam id is ``{parcel id}/{revision}``:
a double submit or a retry of the same form records once.

Every change is a conditional UPDATE (the status it expects), so several workbench
instances sharing one PostgreSQL database cannot both claim or close the same case.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from sqlalchemy import Engine, text

from parcel_stream.model import Hold

Status = Literal["new", "claimed", "examined", "closed"]
OPEN: tuple[Status, ...] = ("new", "claimed")
STATUSES: tuple[Status, ...] = ("new", "claimed", "examined", "closed")
SORTS = ("risk", "age")
PAGE = 50

_HOLD = msgspec.json.Decoder(Hold)


class CaseError(ValueError):
    """An action that the case's state does not allow; the message is for the officer."""


@dataclass(frozen=True, slots=True)
class Case:
    parcel_id: str
    hub: str
    status: Status
    assignee: str | None
    lane: str
    score: float
    probability: float | None
    selection: str
    shipper_id: str
    reason_codes: list[str]
    ruleset_version: str
    learner_version: int
    held_ts_ms: int
    due_ts_ms: int
    updated_ts_ms: int
    revision: int
    source: str
    hold: bytes = b""  # the hold record (with the manifest: personal data)

    @property
    def exam_id(self) -> str:
        """The exam id the case's current outcome gets."""
        return f"{self.parcel_id}/{self.revision}"

    def overdue(self, now_ms: int) -> bool:
        return self.status in OPEN and now_ms > self.due_ts_ms


@dataclass(frozen=True, slots=True)
class Outcome:
    exam_id: str
    parcel_id: str
    outcome: str
    finding: str
    recovered_usd: float
    notes: str
    officer: str
    examined_ts_ms: int
    sent_ts_ms: int | None


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """What the queue shows: hubs (None: all), statuses (default: the open ones), and
    optional lane, reason code, selection and shipper."""

    hubs: Sequence[str] | None = None
    statuses: Sequence[Status] = OPEN
    lane: str = ""
    reason: str = ""
    selection: str = ""
    shipper: str = ""
    sort: str = "risk"


@dataclass(frozen=True, slots=True)
class Page:
    cases: list[Case]
    next_cursor: str  # "" on the last page


@dataclass(frozen=True, slots=True)
class HubCounts:
    hub: str
    by_status: dict[str, int] = field(default_factory=dict)
    oldest_open_ts_ms: int | None = None
    overdue: int = 0

    @property
    def open(self) -> int:
        return sum(self.by_status.get(s, 0) for s in OPEN)


@dataclass(frozen=True, slots=True)
class Ingested:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    bad: int = 0  # not a hold record (skipped)


_CASE_COLS = ("parcel_id, hub, status, assignee, lane, score, probability, selection, "
              "shipper_id, reason_codes, ruleset_version, learner_version, held_ts_ms, "
              "due_ts_ms, updated_ts_ms, revision, source")  # fmt: skip


def _case(row: Any, with_hold: bool = False) -> Case:
    return Case(
        row.parcel_id, row.hub, row.status, row.assignee, row.lane, float(row.score),
        None if row.probability is None else float(row.probability), row.selection,
        row.shipper_id, row.reason_codes.split(), row.ruleset_version, int(row.learner_version),
        int(row.held_ts_ms), int(row.due_ts_ms), int(row.updated_ts_ms), int(row.revision),
        row.source, row.hold.encode() if with_hold else b"",
    )  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


class CaseStore:
    """Cases, outcomes and the audit log in one database (``db.connect``)."""

    def __init__(self, engine: Engine, sla_ms: int = 4 * 3_600_000) -> None:
        self.engine = engine
        self.sla_ms = sla_ms

    # -- holds in -------------------------------------------------------------------
    def ingest(self, raw_holds: Iterable[bytes], at_ms: int | None = None) -> Ingested:
        """Cases from hold records (JSON, the hold contract). Idempotent by parcel id and
        decision source; a record that is not a hold is counted and skipped."""
        at = now_ms() if at_ms is None else at_ms
        latest: dict[str, tuple[Hold, bytes]] = {}
        bad = 0
        for raw in raw_holds:
            try:
                hold = _HOLD.decode(raw)
            except msgspec.DecodeError:  # (ValidationError too)
                bad += 1
                continue
            latest[hold.parcel_id] = (hold, raw)  # in topic order: the last one wins
        new = updated = 0
        with self.engine.begin() as conn:
            for hold, raw in latest.values():
                probability = hold.probability
                risk = probability if probability is not None else hold.score / 100.0
                row = {
                    "p": hold.parcel_id, "hub": hold.hub, "lane": hold.lane, "score": hold.score,
                    "prob": probability, "risk": risk, "sel": hold.selection,
                    "ship": hold.shipper_id, "codes": " ".join(r.code for r in hold.reasons),
                    "rv": hold.ruleset_version, "lv": hold.learner_version,
                    "held": hold.decision_ts_ms, "due": hold.decision_ts_ms + self.sla_ms,
                    "at": at, "src": hold.source, "hold": raw.decode(),
                }  # fmt: skip
                got = conn.execute(text(
                    "INSERT INTO cases (parcel_id, hub, status, assignee, lane, score, "
                    "probability, risk, selection, shipper_id, reason_codes, ruleset_version, "
                    "learner_version, held_ts_ms, due_ts_ms, updated_ts_ms, revision, source, "
                    "hold) VALUES (:p, :hub, 'new', NULL, :lane, :score, :prob, :risk, :sel, "
                    ":ship, :codes, :rv, :lv, :held, :due, :at, 0, :src, :hold) "
                    "ON CONFLICT (parcel_id) DO NOTHING"), row).rowcount  # fmt: skip
                if got:
                    new += 1
                    self._audit(conn, "system", "hold received", hold.parcel_id, hold.source, at)
                    continue
                changed = conn.execute(text(
                    "UPDATE cases SET hub = :hub, lane = :lane, score = :score, "
                    "probability = :prob, risk = :risk, selection = :sel, shipper_id = :ship, "
                    "reason_codes = :codes, ruleset_version = :rv, learner_version = :lv, "
                    "updated_ts_ms = :at, source = :src, hold = :hold "
                    "WHERE parcel_id = :p AND source <> :src"), row).rowcount  # fmt: skip
                if changed:
                    updated += 1
                    self._audit(conn, "system", "hold amended", hold.parcel_id, hold.source, at)
        return Ingested(new, updated, len(latest) - new - updated, bad)

    # -- reading ----------------------------------------------------------------------
    def case(self, parcel_id: str) -> Case | None:
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT {_CASE_COLS}, hold FROM cases WHERE parcel_id = :p"),
                               {"p": parcel_id}).first()  # fmt: skip
        return _case(row, with_hold=True) if row else None

    def queue(self, f: QueueFilter, cursor: str = "", limit: int = PAGE) -> Page:
        """One page of the queue, sorted by risk (highest first) or by age (oldest
        first); ``cursor`` is the previous page's ``next_cursor`` (keyset pagination: as
        fast on page 2,000 as on page 1)."""
        if f.sort not in SORTS:
            raise CaseError(f"sort must be one of {', '.join(SORTS)}")
        where, args = self._where(f)
        if f.sort == "risk":
            order, key = "risk DESC, parcel_id", ("risk", "parcel_id")
            after = "(risk < :c0 OR (risk = :c0 AND parcel_id > :c1))"
        else:
            order, key = "held_ts_ms, parcel_id", ("held_ts_ms", "parcel_id")
            after = "(held_ts_ms > :c0 OR (held_ts_ms = :c0 AND parcel_id > :c1))"
        if cursor:
            try:
                c0, c1 = cursor.split("~", 1)
                args["c0"], args["c1"] = float(c0) if f.sort == "risk" else int(c0), c1
            except ValueError:
                raise CaseError("that page link is not valid; start from the first page") from None
            where.append(after)
        args["lim"] = limit + 1
        sql = (f"SELECT {_CASE_COLS}, risk FROM cases WHERE {' AND '.join(where) or 'TRUE'} "
               f"ORDER BY {order} LIMIT :lim")  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), args).all()
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = ""
        if more and rows:
            last = rows[-1]
            nxt = f"{getattr(last, key[0])!r}~{last.parcel_id}"
        return Page([_case(r) for r in rows], nxt)

    def _where(self, f: QueueFilter) -> tuple[list[str], dict[str, Any]]:
        where, args = [], {}
        if f.hubs is not None:
            if not f.hubs:
                return ["1 = 0"], {}
            names = {f"h{i}": h for i, h in enumerate(f.hubs)}
            where.append(f"hub IN ({', '.join(':' + k for k in names)})")
            args.update(names)
        statuses = [s for s in f.statuses if s in STATUSES] or list(OPEN)
        # the literal list lets the partial indexes (open cases) serve the queue
        where.append(f"status IN ({', '.join(repr(s) for s in statuses)})")
        for col, value in (("lane", f.lane), ("selection", f.selection),
                           ("shipper_id", f.shipper)):  # fmt: skip
            if value:
                where.append(f"{col} = :{col}")
                args[col] = value
        if f.reason:
            where.append("(' ' || reason_codes || ' ') LIKE :reason")
            args["reason"] = f"% {f.reason} %"
        return where, args

    def counts(self, hubs: Sequence[str] | None, at_ms: int | None = None) -> list[HubCounts]:
        """Per hub with open cases: the open cases by status (new, claimed), the oldest
        open hold and how many wait past their service-level time. One pass over the open
        cases only (their partial indexes), however many closed cases accumulate."""
        at = now_ms() if at_ms is None else at_ms
        if hubs is not None and not hubs:
            return []
        where = "status IN ('new', 'claimed')"
        args: dict[str, Any] = {"at": at}
        if hubs is not None:
            where += f" AND hub IN ({', '.join(':h' + str(i) for i in range(len(hubs)))})"
            args.update({f"h{i}": h for i, h in enumerate(hubs)})
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for hub, status, n, oldest, late in conn.execute(text(
                "SELECT hub, status, count(*), min(held_ts_ms), "
                "sum(CASE WHEN due_ts_ms < :at THEN 1 ELSE 0 END) "
                f"FROM cases WHERE {where} GROUP BY hub, status"), args):  # fmt: skip
                got = out.setdefault(hub, {"by": {}, "oldest": None, "late": 0})
                got["by"][status] = int(n)
                got["oldest"] = min(int(oldest), got["oldest"] or int(oldest))
                got["late"] += int(late or 0)
        return [HubCounts(h, v["by"], v["oldest"], v["late"]) for h, v in sorted(out.items())]

    def hubs(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT DISTINCT hub FROM cases ORDER BY hub"))]

    def outcomes_of(self, parcel_id: str) -> list[Outcome]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT * FROM outcomes WHERE parcel_id = :p ORDER BY examined_ts_ms"),
                {"p": parcel_id},
            ).all()
        return [_outcome(r) for r in rows]

    def shipper_history(self, shipper_id: str, limit: int = 20) -> list[tuple[Case, Outcome]]:
        """Earlier examinations of the same shipper, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(text(
                f"SELECT {', '.join('c.' + c.strip() for c in _CASE_COLS.split(','))}, "
                "o.exam_id, o.outcome, o.finding, o.recovered_usd, o.notes, o.officer, "
                "o.examined_ts_ms, o.sent_ts_ms "
                "FROM outcomes o JOIN cases c ON c.parcel_id = o.parcel_id "
                "WHERE c.shipper_id = :s ORDER BY o.examined_ts_ms DESC LIMIT :n"),
                {"s": shipper_id, "n": limit}).all()  # fmt: skip
        return [(_case(r), _outcome(r)) for r in rows]

    # -- actions ----------------------------------------------------------------------
    def claim(self, parcel_id: str, officer: str, at_ms: int | None = None) -> None:
        at = now_ms() if at_ms is None else at_ms
        with self.engine.begin() as conn:
            n = conn.execute(
                text(
                    "UPDATE cases SET status = 'claimed', assignee = :u, updated_ts_ms = :at "
                    "WHERE parcel_id = :p AND (status = 'new' OR (status = 'claimed' "
                    "AND assignee = :u))"
                ),
                {"u": officer, "at": at, "p": parcel_id},
            ).rowcount
            if not n:
                raise CaseError(self._why_not(conn, parcel_id, "claim"))
            self._audit(conn, officer, "claimed", parcel_id, "", at)

    def assign(self, parcel_id: str, to: str, by: str, at_ms: int | None = None) -> None:
        at = now_ms() if at_ms is None else at_ms
        with self.engine.begin() as conn:
            n = conn.execute(text(
                "UPDATE cases SET status = 'claimed', assignee = :u, updated_ts_ms = :at "
                "WHERE parcel_id = :p AND status IN ('new', 'claimed')"),
                {"u": to, "at": at, "p": parcel_id}).rowcount  # fmt: skip
            if not n:
                raise CaseError(self._why_not(conn, parcel_id, "assign"))
            self._audit(conn, by, "assigned", parcel_id, to, at)

    def record(
        self, parcel_id: str, revision: int, outcome: str, finding: str, recovered_usd: float,
        notes: str, officer: str, at_ms: int | None = None,
    ) -> tuple[str, bool]:  # fmt: skip
        """Record the examination of the case at ``revision`` (the revision the form was
        shown at). Returns (exam id, recorded now); a second submit of the same form
        returns (exam id, False) and records nothing."""
        at = now_ms() if at_ms is None else at_ms
        exam_id = f"{parcel_id}/{revision}"
        with self.engine.begin() as conn:
            if conn.execute(text("SELECT 1 FROM outcomes WHERE exam_id = :e"),
                            {"e": exam_id}).first():  # fmt: skip
                current = conn.execute(text("SELECT revision FROM cases WHERE parcel_id = :p"),
                                       {"p": parcel_id}).scalar()  # fmt: skip
                if current is not None and int(current) != revision:
                    raise CaseError("the case was reopened after this form was shown: "
                                    "record the outcome again on the current page")  # fmt: skip
                return exam_id, False
            n = conn.execute(text(
                "UPDATE cases SET status = 'examined', assignee = coalesce(assignee, :u), "
                "updated_ts_ms = :at WHERE parcel_id = :p AND revision = :r "
                "AND status IN ('new', 'claimed')"),
                {"u": officer, "at": at, "p": parcel_id, "r": revision}).rowcount  # fmt: skip
            if not n:
                raise CaseError(self._why_not(conn, parcel_id, "record an outcome for"))
            conn.execute(text(
                "INSERT INTO outcomes (exam_id, parcel_id, outcome, finding, recovered_usd, "
                "notes, officer, examined_ts_ms, sent_ts_ms) VALUES (:e, :p, :o, :f, :usd, :n, "
                ":u, :at, NULL)"), {"e": exam_id, "p": parcel_id, "o": outcome, "f": finding,
                "usd": recovered_usd, "n": notes, "u": officer, "at": at})  # fmt: skip
            self._audit(conn, officer, "recorded outcome", parcel_id, f"{outcome}/{finding}", at)
        return exam_id, True

    def reopen(self, parcel_id: str, reason: str, by: str, at_ms: int | None = None) -> None:
        at = now_ms() if at_ms is None else at_ms
        if not reason.strip():
            raise CaseError("say why the case is reopened")
        with self.engine.begin() as conn:
            n = conn.execute(text(
                "UPDATE cases SET status = 'claimed', revision = revision + 1, "
                "updated_ts_ms = :at WHERE parcel_id = :p AND status IN ('examined', 'closed')"),
                {"at": at, "p": parcel_id}).rowcount  # fmt: skip
            if not n:
                raise CaseError(self._why_not(conn, parcel_id, "reopen"))
            self._audit(conn, by, "reopened", parcel_id, reason.strip()[:500], at)

    # -- the outbox to the exam-results topic ---------------------------------------
    def unsent(self, limit: int = 500) -> list[Outcome]:
        """Outcomes recorded but not yet on the exam-results topic, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT * FROM outcomes WHERE sent_ts_ms IS NULL "
                    "ORDER BY examined_ts_ms LIMIT :n"
                ),
                {"n": limit},
            ).all()
        return [_outcome(r) for r in rows]

    def mark_sent(self, exam_ids: Sequence[str], at_ms: int | None = None) -> None:
        """The exam results are on the topic: their cases close."""
        at = now_ms() if at_ms is None else at_ms
        if not exam_ids:
            return
        with self.engine.begin() as conn:
            for e in exam_ids:
                conn.execute(text("UPDATE outcomes SET sent_ts_ms = :at WHERE exam_id = :e "
                                  "AND sent_ts_ms IS NULL"), {"at": at, "e": e})  # fmt: skip
                parcel_id, revision = e.rsplit("/", 1)
                conn.execute(text("UPDATE cases SET status = 'closed', updated_ts_ms = :at "
                                  "WHERE parcel_id = :p AND revision = :r AND status = 'examined'"),
                             {"at": at, "p": parcel_id, "r": int(revision)})  # fmt: skip

    # -- audit ------------------------------------------------------------------------
    def audit(self, username: str, action: str, parcel_id: str | None = None,
              detail: str = "", at_ms: int | None = None) -> None:  # fmt: skip
        with self.engine.begin() as conn:
            self._audit(conn, username, action, parcel_id, detail,
                        now_ms() if at_ms is None else at_ms)  # fmt: skip

    def audit_log(self, parcel_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ("WHERE parcel_id = :p", {"p": parcel_id}) if parcel_id else ("", {})
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT ts_ms, username, action, parcel_id, detail "
                                     f"FROM audit {where} ORDER BY id DESC LIMIT :n"),
                                {**args, "n": limit}).all()  # fmt: skip
        return [dict(r._mapping) for r in rows]

    @staticmethod
    def _audit(conn: Any, username: str, action: str, parcel_id: str | None, detail: str,
               at: int) -> None:  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO audit (ts_ms, username, action, parcel_id, detail) "
                "VALUES (:t, :u, :a, :p, :d)"
            ),
            {"t": at, "u": username, "a": action, "p": parcel_id, "d": detail},
        )

    @staticmethod
    def _why_not(conn: Any, parcel_id: str, verb: str) -> str:
        row = conn.execute(text("SELECT status, assignee FROM cases WHERE parcel_id = :p"),
                           {"p": parcel_id}).first()  # fmt: skip
        if row is None:
            return f"no held parcel {parcel_id!r}"
        if row.status == "claimed" and verb == "claim":
            return f"cannot claim {parcel_id}: {row.assignee} has claimed it"
        return f"cannot {verb} {parcel_id}: the case is {row.status}"


def _outcome(r: Any) -> Outcome:
    return Outcome(r.exam_id, r.parcel_id, r.outcome, r.finding, float(r.recovered_usd), r.notes,
                   r.officer, int(r.examined_ts_ms),
                   None if r.sent_ts_ms is None else int(r.sent_ts_ms))  # fmt: skip
