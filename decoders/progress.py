"""Progress reports: a tqdm bar on a terminal, periodic plain lines anywhere else.

A bar redraws itself with carriage returns, which a log file (CI, a cluster job, `2> log`) keeps as one line per
update: megabytes for one run. When stderr is not a terminal, `progress` instead prints one line at the start,
then at most one every `LINE_SECONDS` seconds, then one at the end: `desc: 120/480 steps (25%), 31 s, ~93 s left`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

LINE_SECONDS = 30.0  # seconds between two progress lines in a log


class LineProgress:
    """The part of tqdm's interface this project uses (update, set_postfix_str, write, close, iteration, `with`),
    printing occasional whole lines to a stream that is not a terminal."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", stream=None, every: float = LINE_SECONDS):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.desc, self.unit = total, int(initial), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.postfix = float(every), ""
        self.t0 = time.monotonic()
        self.last = self.t0
        self.start_n = self.n
        self.closed = False
        self._line("started")

    def _line(self, event: str = "") -> None:
        elapsed = time.monotonic() - self.t0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts.append(f"{elapsed:.0f} s")
        rate_n = self.n - self.start_n
        if self.total and 0 < rate_n and self.n < self.total:
            parts.append(f"~{elapsed / rate_n * (self.total - self.n):.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        if event:
            parts.append(event)
        print(f"{self.desc}: {', '.join(parts)}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def write(self, s: str) -> None:
        print(s, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line("done" if not self.total or self.n >= self.total else "stopped")

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable if self.iterable is not None else ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """A progress report that prints nothing."""

    def __init__(self, iterable: Iterable | None = None, **_: Any):
        self.iterable = iterable

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress(iterable: Iterable | None = None, *, enabled: bool = True, total: int | None = None, initial: int = 0,
             desc: str = "", unit: str = "it"):
    """A progress report over `iterable` (or updated by hand): a tqdm bar when stderr is a terminal, periodic
    lines when it is not, nothing when `enabled` is False."""
    if not enabled:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit)
