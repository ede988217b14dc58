"""The fast form for local files: whole batches, and a part that lost one computed again.

    WholeBatchRows(stream, keys, files, sizes, names).run()

input_fn(whole_batches=True) drops a batch whole when any of its images fails, so a part's rows
are handed to the accountant only once all its batches arrived; a part that lost one is
computed again the default way (image by image, failed images dropped, batches refilled),
which is what every part gets without this, so the rows are the same either way, to the bit.
After REDONE_PARTS such parts (a folder with many bad files) the rest of the run goes the
default way: at most that many parts are computed twice. Light at import: the Estimator and
the input_fn come from `stream` (stream.PartStream, or a test's stand-in).
"""
from __future__ import annotations

import itertools
import logging
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)

REDONE_PARTS = 2  # parts computed again after losing a batch before the run stops trying


class WholeBatchRows:
    """The rows of `keys` (cut into parts of `sizes`, named `names`), whole batches first.

    stream: has input(keys, sizes, files, whole_batches=False) -> an input_fn, predict(input_fn,
    hooks=()) -> batches, first(batch), hand_over(batches), on_batch(held=0), wait (an
    InputWait) and accountant (an Accountant)."""

    def __init__(self, stream, keys: Sequence[str], files: Optional[Sequence[str]],
                 sizes: Sequence[int], names: Sequence[str]):
        self.stream, self.keys, self.files = stream, keys, files
        self.sizes, self.names = list(sizes), list(names)
        self.bounds = [0, *itertools.accumulate(self.sizes)]
        self.redone = 0          # parts that lost a batch, computed again
        self.part = 0            # the part being filled
        self.held: List[tuple] = []   # its rows so far: (key, fc7)

    def run(self) -> None:
        s = self.stream
        main = s.predict(s.input(self.keys, self.sizes, self.files, whole_batches=True),
                         [s.wait.hook()])
        try:
            for batch in main:
                if not self._take(batch):
                    break
        finally:
            main.close()
        if self.redone >= REDONE_PARTS and self.part < len(self.sizes):
            log.info("%d parts lost batches to files that failed: the rest of this run is "
                     "decoded image by image", self.redone)
        if self.part < len(self.sizes):  # from the part being filled, whatever it holds; or
            self._default_way(self.part, len(self.sizes))  # the stream ended before its end

    def _take(self, batch) -> bool:
        """One batch of the whole-batch stream; False once the run stops trying."""
        self.stream.first(batch)
        rows = [k.decode("utf-8", "surrogateescape") for k in batch["path"]]
        at = self._position(rows[0], self.bounds[self.part] + len(self.held))
        while at >= self.bounds[self.part + 1] and self.redone < REDONE_PARTS:
            self._close_part()  # the stream is past the part being filled
        if self.redone >= REDONE_PARTS:
            return False
        self.held.extend(zip(rows, batch["fc7"]))
        if at + len(rows) == self.bounds[self.part + 1]:
            self._close_part()
        else:
            self.stream.on_batch(len(self.held))  # progress counts the rows held for the part
        return True

    def _position(self, key: str, after: int) -> int:
        """Where `key` is in the listing; batches come in order, so search forward."""
        n = after
        while self.keys[n] != key:
            n += 1
        return n

    def _close_part(self) -> None:
        q, s = self.part, self.stream
        if len(self.held) != self.sizes[q]:
            self.redone += 1
            log.info("%s lost a batch to a file that failed: computing it again image by "
                     "image", self.names[q])
            self._default_way(q, q + 1)
        else:
            for key, row in self.held:
                s.accountant.row(key, row)
            s.accountant.commit_ready()  # now, not at the next part's first row
            s.on_batch()
        self.part, self.held = q + 1, []

    def _default_way(self, a: int, b: int) -> None:
        """Parts a..b-1 image by image."""
        lo, hi = self.bounds[a], self.bounds[b]
        if lo == hi:
            return
        files = self.files[lo:hi] if self.files is not None else None
        s = self.stream
        s.hand_over(s.predict(s.input(self.keys[lo:hi], self.sizes[a:b], files)))
        s.accountant.commit_ready()
