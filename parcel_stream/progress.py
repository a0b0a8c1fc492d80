"""A small progress line for long commands: a bar with rate on a terminal, a line every few
seconds otherwise (logs, CI). Writes to stderr so stdout stays for results."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "records",
        stream: TextIO | None = None,
        every_s: float | None = None,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 5.0)
        self.count = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._show(now, final=False)

    def rate(self) -> float:
        return self.count / max(time.monotonic() - self.start, 1e-9)

    def _show(self, now: float, final: bool) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        if self.total:
            pct = min(100.0, 100.0 * self.count / self.total)
            filled = int(pct / 5)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {pct:5.1f}% "
            done = f"{self.count:,}/{self.total:,}"
        else:
            bar, done = "", f"{self.count:,}"
        text = f"{self.what}: {bar}{done} {self.unit} ({rate:,.0f}/s, {now - self.start:.1f}s)"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._show(time.monotonic(), final=True)
