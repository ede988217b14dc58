"""Progress of a long job: a tqdm bar on a terminal, periodic log lines elsewhere (CI, nohup)."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("estimator_vgg")


class LogProgress:
    """A log line every `every_s` seconds: done/total, errors, images/s, ETA (and, on Ray,
    shards finished/all)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s

    def start(self, total: int) -> None:
        self.total, self.t0, self.last = total, time.time(), time.time()

    def update(self, done: int, errors: int, shards: str = "") -> None:
        now = time.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        log.info("progress: %d/%d images (%.1f%%), %d errors, %.2f images/s, ETA %s%s", done,
                 self.total, 100.0 * done / max(self.total, 1), errors, rate, _hms(eta),
                 f", shards {shards}" if shards else "")

    def close(self) -> None:
        pass


class BarProgress:
    """tqdm's bar: images done and total, images/s, ETA, errors so far."""

    def __init__(self):
        from tqdm import tqdm
        self._tqdm = tqdm
        self.bar = None

    def start(self, total: int) -> None:
        import os
        try:  # a terminal that reports no size (a bare pty) would hide the bar
            size = os.get_terminal_size(sys.stderr.fileno())
        except OSError:
            size = os.terminal_size((0, 0))
        sized = size.columns > 0 and size.lines > 0
        self.bar = self._tqdm(total=total, unit="img", file=sys.stderr, desc="fc7",
                              smoothing=0.1, dynamic_ncols=sized,
                              ncols=None if sized else 100, nrows=None if sized else 20)
        self.bar.set_postfix(errors=0)
        self.done = 0

    def update(self, done: int, errors: int, shards: str = "") -> None:
        self.bar.update(done - self.done)
        self.done = done
        extra = {"shards": shards} if shards else {}
        self.bar.set_postfix(errors=errors, refresh=False, **extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def for_stream(stream=sys.stderr):
    """A bar when `stream` is a terminal, log lines when it is not."""
    return BarProgress() if stream.isatty() else LogProgress()


def _hms(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
