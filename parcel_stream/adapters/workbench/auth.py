"""Users, roles, sessions and sign-in throttling for the workbench.

Roles: an ``officer`` works the cases of their own hubs; a ``supervisor`` sees every hub,
reassigns and reopens; an ``analyst`` reads every hub without personal data (no consignee
names or addresses). Passwords are stored as argon2id hashes. A session is a random token
in an HttpOnly, SameSite=Lax cookie (Secure behind TLS); the database keeps only its
SHA-256, with the session's CSRF token, which every form must send back.

Throttling: after ``MAX_FAILURES`` failed sign-ins for one user name or from one client
within ``WINDOW_MS``, further attempts are refused until the window passes, whether the
password is right or not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, text

from parcel_stream.adapters.workbench.cases import now_ms

Role = Literal["officer", "supervisor", "analyst"]
ROLES: tuple[Role, ...] = ("officer", "supervisor", "analyst")
MAX_FAILURES = 5
WINDOW_MS = 15 * 60_000
SESSION_MS = 12 * 3_600_000
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_HASHER = PasswordHasher()
# verifying against this when the user does not exist takes as long as a real check
_DUMMY = _HASHER.hash("not a password of anyone")


class AuthError(ValueError):
    """A sign-in or user-administration request that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    hubs: tuple[str, ...]  # an officer's hubs; supervisors and analysts see all
    disabled: bool = False

    @property
    def all_hubs(self) -> bool:
        return self.role in ("supervisor", "analyst")

    @property
    def sees_personal_data(self) -> bool:
        return self.role in ("officer", "supervisor")

    @property
    def can_work(self) -> bool:
        return self.role in ("officer", "supervisor")

    def may_see(self, hub: str) -> bool:
        return self.all_hubs or hub in self.hubs

    def visible_hubs(self) -> list[str] | None:
        """None: every hub."""
        return None if self.all_hubs else list(self.hubs)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    expires_ts_ms: int


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """Users and sessions in the workbench database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, username: str, password: str, role: str, hubs: list[str]) -> User:
        if not _NAME.match(username):
            raise AuthError(f"user name {username!r}: 2-64 characters, lower-case letters, "
                            "digits, '.', '_' or '-'")  # fmt: skip
        if role not in ROLES:
            raise AuthError(f"role {role!r}: use one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"the password needs at least {MIN_PASSWORD} characters")
        hubs = [h.strip() for h in hubs if h.strip()]
        if role == "officer" and not hubs:
            raise AuthError("an officer needs at least one hub (--hubs HUB1,HUB2)")
        with self.engine.begin() as conn:
            if conn.execute(text("SELECT 1 FROM users WHERE username = :u"),
                            {"u": username}).first():  # fmt: skip
                raise AuthError(f"user {username!r} exists already")
            conn.execute(text("INSERT INTO users VALUES (:u, :h, :r, :hubs, 0, :t)"),
                         {"u": username, "h": _HASHER.hash(password), "r": role,
                          "hubs": ",".join(hubs), "t": now_ms()})  # fmt: skip
        return User(username, role, tuple(hubs))

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(text("UPDATE users SET disabled = :d WHERE username = :u"),
                             {"d": int(disabled), "u": username}).rowcount  # fmt: skip
            if not n:
                raise AuthError(f"no user {username!r}")
            if disabled:  # signed out everywhere
                conn.execute(text("DELETE FROM sessions WHERE username = :u"), {"u": username})

    def set_password(self, username: str, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"the password needs at least {MIN_PASSWORD} characters")
        with self.engine.begin() as conn:
            n = conn.execute(text("UPDATE users SET password_hash = :h WHERE username = :u"),
                             {"h": _HASHER.hash(password), "u": username}).rowcount  # fmt: skip
            if not n:
                raise AuthError(f"no user {username!r}")
            conn.execute(text("DELETE FROM sessions WHERE username = :u"), {"u": username})

    def get(self, username: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM users WHERE username = :u"),
                               {"u": username}).first()  # fmt: skip
        if row is None:
            return None
        hubs = tuple(h for h in row.hubs.split(",") if h)
        return User(row.username, row.role, hubs, bool(row.disabled))

    def all(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM users ORDER BY username")).all()
        return [User(r.username, r.role, tuple(h for h in r.hubs.split(",") if h),
                     bool(r.disabled)) for r in rows]  # fmt: skip

    # -- signing in -------------------------------------------------------------------
    def throttled(self, username: str, client: str, at_ms: int | None = None) -> bool:
        at = now_ms() if at_ms is None else at_ms
        with self.engine.connect() as conn:
            by_user = conn.execute(text("SELECT count(*) FROM sign_in_failures "
                                        "WHERE username = :u AND ts_ms > :t"),
                                   {"u": username, "t": at - WINDOW_MS}).scalar()  # fmt: skip
            by_client = conn.execute(text("SELECT count(*) FROM sign_in_failures "
                                          "WHERE client = :c AND ts_ms > :t"),
                                     {"c": client, "t": at - WINDOW_MS}).scalar()  # fmt: skip
        return int(by_user or 0) >= MAX_FAILURES or int(by_client or 0) >= 4 * MAX_FAILURES

    def sign_in(self, username: str, password: str, client: str) -> tuple[str, Session]:
        """A new session for the right password: (cookie token, session). Raises
        ``AuthError`` with the same message for an unknown user and a wrong password."""
        at = now_ms()
        if self.throttled(username, client, at):
            raise AuthError("too many failed sign-ins: wait 15 minutes and try again")
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM users WHERE username = :u"),
                               {"u": username}).first()  # fmt: skip
        stored = row.password_hash if row is not None else _DUMMY
        try:
            _HASHER.verify(stored, password)
            ok = row is not None and not row.disabled
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO sign_in_failures (username, client, ts_ms) VALUES (:u, :c, :t)"
                    ),
                    {"u": username, "c": client, "t": at},
                )
                conn.execute(text("DELETE FROM sign_in_failures WHERE ts_ms < :old"),
                             {"old": at - 4 * WINDOW_MS})  # fmt: skip
            raise AuthError("wrong user name or password")
        assert row is not None
        if _HASHER.check_needs_rehash(stored):
            self.set_password(username, password)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(text("INSERT INTO sessions VALUES (:h, :u, :c, :t, :e)"),
                         {"h": _token_hash(token), "u": username, "c": csrf, "t": at,
                          "e": at + SESSION_MS})  # fmt: skip
            conn.execute(text("DELETE FROM sessions WHERE expires_ts_ms < :t"), {"t": at})
        user = self.get(username)
        assert user is not None
        return token, Session(user, csrf, at + SESSION_MS)

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM sessions WHERE token_hash = :h"),
                               {"h": _token_hash(token)}).first()  # fmt: skip
        if row is None or row.expires_ts_ms < now_ms():
            return None
        user = self.get(row.username)
        if user is None or user.disabled:
            return None
        return Session(user, row.csrf, int(row.expires_ts_ms))

    def sign_out(self, token: str | None) -> None:
        if token:
            with self.engine.begin() as conn:
                conn.execute(text("DELETE FROM sessions WHERE token_hash = :h"),
                             {"h": _token_hash(token)})  # fmt: skip


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf, sent or "")
