"""The workbench's database: an engine for SQLite or PostgreSQL, and the schema's
migrations, applied in order, once, by whichever instance starts first.

SQLite (``sqlite:///path``) is the embedded default: write-ahead log, a busy timeout, one
writer at a time. PostgreSQL (``postgresql://user@host:port/db``, driven by psycopg) is the
production store shared by several instances; migrations take an advisory lock so that
instances starting together apply each one exactly once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text

# Each migration: its version and statements. {id} is the dialect's auto-increment key.
# Applied in one transaction each; never edit one that has shipped, add the next.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE cases (
            parcel_id TEXT PRIMARY KEY,
            hub TEXT NOT NULL,
            status TEXT NOT NULL,
            assignee TEXT,
            lane TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            probability DOUBLE PRECISION,
            risk DOUBLE PRECISION NOT NULL,
            selection TEXT NOT NULL,
            shipper_id TEXT NOT NULL,
            reason_codes TEXT NOT NULL,
            ruleset_version TEXT NOT NULL,
            learner_version BIGINT NOT NULL,
            held_ts_ms BIGINT NOT NULL,
            due_ts_ms BIGINT NOT NULL,
            updated_ts_ms BIGINT NOT NULL,
            revision INTEGER NOT NULL,
            source TEXT NOT NULL,
            hold TEXT NOT NULL
        )""",
        "CREATE INDEX cases_open_risk ON cases (hub, risk DESC, parcel_id)"
        " WHERE status IN ('new', 'claimed')",
        "CREATE INDEX cases_open_age ON cases (hub, held_ts_ms, parcel_id)"
        " WHERE status IN ('new', 'claimed')",
        "CREATE INDEX cases_open_all_risk ON cases (risk DESC, parcel_id)"
        " WHERE status IN ('new', 'claimed')",
        "CREATE INDEX cases_open_all_age ON cases (held_ts_ms, parcel_id)"
        " WHERE status IN ('new', 'claimed')",
        "CREATE INDEX cases_shipper ON cases (shipper_id)",
        """CREATE TABLE outcomes (
            exam_id TEXT PRIMARY KEY,
            parcel_id TEXT NOT NULL,
            outcome TEXT NOT NULL,
            finding TEXT NOT NULL,
            recovered_usd DOUBLE PRECISION NOT NULL,
            notes TEXT NOT NULL,
            officer TEXT NOT NULL,
            examined_ts_ms BIGINT NOT NULL,
            sent_ts_ms BIGINT
        )""",
        "CREATE INDEX outcomes_parcel ON outcomes (parcel_id)",
        "CREATE INDEX outcomes_unsent ON outcomes (examined_ts_ms) WHERE sent_ts_ms IS NULL",
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            hubs TEXT NOT NULL,
            disabled INTEGER NOT NULL,
            created_ts_ms BIGINT NOT NULL
        )""",
        """CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_ts_ms BIGINT NOT NULL,
            expires_ts_ms BIGINT NOT NULL
        )""",
        """CREATE TABLE sign_in_failures (
            id {id},
            username TEXT NOT NULL,
            client TEXT NOT NULL,
            ts_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX sign_in_failures_user ON sign_in_failures (username, ts_ms)",
        "CREATE INDEX sign_in_failures_client ON sign_in_failures (client, ts_ms)",
        """CREATE TABLE audit (
            id {id},
            ts_ms BIGINT NOT NULL,
            username TEXT NOT NULL,
            action TEXT NOT NULL,
            parcel_id TEXT,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX audit_parcel ON audit (parcel_id, ts_ms)",
    ]),
]  # fmt: skip

_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
       "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"}  # fmt: skip


class DatabaseError(RuntimeError):
    """The case store cannot be used; the message says what to do."""


def connect(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///file`` or ``postgresql://...``)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not (url.startswith("sqlite:") or url.startswith("postgresql+psycopg://")):
        raise DatabaseError(
            f"PARCEL_WORKBENCH_DB={url.split('://')[0]}://...: use sqlite:///path/to/file.db "
            "or postgresql://user:password@host:port/database"
        )
    if url.startswith("sqlite:"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def migrate(engine: Engine) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied."""
    dialect = engine.dialect.name
    applied: list[int] = []
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, applied_ts_ms BIGINT NOT NULL)"
            )
        )
        done = {r[0] for r in conn.execute(text("SELECT version FROM schema_migrations"))}
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for sql in statements:
                conn.execute(text(sql.replace("{id}", _ID[dialect])))
            conn.execute(text("INSERT INTO schema_migrations VALUES (:v, :t)"),
                         {"v": version, "t": _now_ms()})  # fmt: skip
            applied.append(version)
    return applied


def schema_version(conn: Connection) -> int:
    got = conn.execute(text("SELECT max(version) FROM schema_migrations")).scalar()
    return int(got or 0)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
