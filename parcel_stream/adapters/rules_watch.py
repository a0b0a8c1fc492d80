"""Hot swap of the rule set: the worker watches ``PARCEL_RULES_FILE`` between batches.

A changed file is loaded, validated and compiled; if that succeeds the next batch is scored
with it, otherwise the error is logged and counted and the current rule set keeps running.
Publishing a rule set is therefore: write the new file next to the old one and rename it
over (an atomic replace), on every worker host or on a shared volume.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

from parcel_stream.rules import RuleSet, RuleSetError, default_ruleset
from parcel_stream.settings import Settings

log = logging.getLogger("parcel_stream.rules")


class RuleSetWatcher:
    def __init__(
        self,
        settings: Settings,
        initial: RuleSet | None = None,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.path = settings.rules_file
        self.check_every_s = check_every_s
        self.clock = clock
        self.current = initial or default_ruleset(settings)
        self.last_error: str | None = None
        self._next_check = 0.0
        self._stat = self._stat_now()
        self._digest = self._digest_now()

    def _stat_now(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _digest_now(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def poll(self) -> RuleSet | None:
        """The new rule set if the file changed and is valid; None otherwise."""
        if not self.path:
            return None
        now = self.clock()
        if now < self._next_check:
            return None
        self._next_check = now + self.check_every_s
        stat = self._stat_now()
        if stat == self._stat:
            return None
        self._stat = stat
        digest = self._digest_now()
        if digest is None or digest == self._digest:
            return None
        self._digest = digest
        try:
            new = default_ruleset(self.settings)
        except RuleSetError as exc:
            self.last_error = str(exc)
            log.error("rule set refused, keeping %s: %s", self.current.version, exc)
            raise
        self.last_error = None
        log.info("rule set %s replaces %s", new.version, self.current.version)
        self.current = new
        return new
