"""Progress for a terminal and for a log file: a tqdm bar when stderr is a terminal, plain lines otherwise.

Under ``nohup``, ``torchrun``, CI or ``> study.log 2>&1`` a bar would write every frame with a
carriage return into the file. There each long loop says once, on one line, what it did
(``sampling: 1,000 img in 42.1 s (23.8 img/s)``), and the training loop keeps its one line per epoch.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, TextIO

from tqdm.auto import tqdm


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is an interactive terminal, or a notebook's
    (a Jupyter kernel's streams are not terminals, but tqdm.auto draws its widgets there)."""
    if "ipykernel" in sys.modules:
        return True
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class Progress:
    """A bar's interface (``update``, ``set_postfix``, ``n``, ``close``) over a live tqdm bar on a
    terminal; elsewhere a counter that, with ``summary``, prints one line when it closes."""

    def __init__(self, total: int, desc: str, enabled: bool = True, *, unit: str = "it", initial: int = 0,
                 summary: bool = False, leave: bool = True):
        self.desc, self.unit, self.summary, self.enabled = desc, unit, summary, enabled
        self.start, self.initial, self.count = time.perf_counter(), initial, initial
        live = enabled and is_terminal()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                        dynamic_ncols=True) if live else None

    @property
    def n(self) -> int:
        """How many have been done (``initial`` included)."""
        return self.count

    def update(self, k: int = 1) -> None:
        """``k`` more done."""
        self.count += k
        if self.bar is not None:
            self.bar.update(k)

    def set_postfix(self, **values) -> None:
        """Values shown after a live bar (none in a log file)."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        """End the bar; in a log file, with ``summary``, print the one line of what was done."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.summary:
            done, seconds = self.count - self.initial, time.perf_counter() - self.start
            print(f"{self.desc}: {done:,} {self.unit} in {seconds:.1f} s ({done / max(seconds, 1e-9):.1f} "
                  f"{self.unit}/s)", file=sys.stderr, flush=True)


def say(text: str) -> None:
    """One line on stdout that does not tear a live bar (``tqdm.write``), flushed at once: in a log
    file it is there as soon as it is said, and in order with the lines on stderr."""
    tqdm.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def long_step(desc: str, count: int, enabled: bool = True, unit: str = "img") -> Iterator[None]:
    """A step with no inner loop to report from (an IWAE bound, a point of a sweep): a bar that
    completes at its end on a terminal, one line in a log file."""
    bar = Progress(count, desc, enabled, unit=unit, summary=True)
    try:
        yield
        bar.update(count)
    finally:
        bar.close()
