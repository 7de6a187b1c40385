"""The error and report of the conformance checks (pure Python)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


class ConformanceError(AssertionError):
    """A plugin failed one conformance check; the message names the plugin, the check and what differed."""

    def __init__(self, kind: str, name: str, check: str, detail: str) -> None:
        self.kind, self.name, self.check, self.detail = kind, name, check, detail
        super().__init__(f"{kind} {name!r} fails the conformance check '{check}': {detail}")


@dataclass
class Report:
    """What a conformance check ran: ``(check, seconds)`` per passed check, ``(check, reason)`` per skipped one."""

    kind: str
    name: str
    passed: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @contextmanager
    def check(self, what: str):
        """Run one check; any failure inside becomes a :class:`ConformanceError` naming ``what``."""
        start = time.perf_counter()
        try:
            yield
        except ConformanceError:
            raise
        except Exception as exc:  # an exception is a failed check too: name the check, keep the cause
            detail = str(exc) if isinstance(exc, AssertionError) and str(exc) else f"{type(exc).__name__}: {exc}"
            raise ConformanceError(self.kind, self.name, what, detail) from exc
        self.passed.append((what, round(time.perf_counter() - start, 3)))

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append((what, reason))

    def summary(self) -> str:
        done = ", ".join(f"{c} ({s:.1f}s)" for c, s in self.passed)
        skipped = "".join(f"\n  skipped {c}: {r}" for c, r in self.skipped)
        return f"{self.kind} {self.name!r}: {len(self.passed)} checks passed: {done}{skipped}"
