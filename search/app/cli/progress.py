"""Progress of long work on stderr, with an ETA; silent under ``--json`` and ``--quiet``.

The engines report ``(what, done, total)`` through a callback (:data:`scaling.laws.fit.Progress`);
this prints it as plain lines, at most one a second per task, so a log file stays readable and
a terminal is not flooded.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class StderrProgress:
    """A callable ``(what, done, total)`` that prints ``what: done/total (pct), elapsed, ETA``.

    Args:
        enabled: False under ``--json`` or ``--quiet``: then it prints nothing.
        every_s: The least time between two lines of one task (the last line always prints).
        stream: Where to print (stderr).
    """

    def __init__(self, enabled: bool = True, every_s: float = 1.0, stream: TextIO | None = None) -> None:
        self.enabled, self.every_s, self.stream = enabled, every_s, stream or sys.stderr
        self.first: dict[str, tuple[float, int]] = {}
        self.printed: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        started, done_at_start = self.first.setdefault(what, (now, done))  # a resumed task starts part done
        if done < total and now - self.printed.get(what, -1e9) < self.every_s:
            return
        self.printed[what] = now
        elapsed = now - started
        line = f"{what}: {done}/{total} ({done / max(total, 1):.0%}), {duration(elapsed)} elapsed"
        if done_at_start < done < total:
            line += f", ETA {duration(elapsed / (done - done_at_start) * (total - done))}"
        self.stream.write(line + (f"  {note}" if note else "") + "\n")
        self.stream.flush()
