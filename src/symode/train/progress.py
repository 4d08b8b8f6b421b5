"""A progress bar with no dependency: redrawn in place on a terminal, and, when the output is
not one (a log file, CI), a line at every twentieth of the run and at its end."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(i, **figures)`` after iteration ``i`` of ``total``; ``close()`` ends the line."""

    def __init__(self, total: int, *, stream: TextIO | None = None, label: str = "train", quiet: bool = False):
        self.total, self.label, self.quiet = total, label, quiet
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = max(1, total // 20)
        self.start = time.perf_counter()

    def update(self, i: int, **figures: float) -> None:
        if self.quiet:
            return
        if not self.tty and i % self.every and i != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = elapsed / max(i, 1)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in figures.items())
        width = 24
        done = int(width * i / max(self.total, 1))
        bar = "#" * done + "." * (width - done)
        line = f"{self.label} [{bar}] {i}/{self.total}  {shown}  {rate:.2f} s/it  eta {rate * (self.total - i):.0f} s"
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own (an evaluation, a checkpoint), not overwritten by the bar."""
        if not self.quiet:
            self.stream.write(("\n" if self.tty else "") + message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
