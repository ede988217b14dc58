"""The entries of a run's parts through one Estimator, every row to the accountant in order.

    stream = PartStream(cfg, prepared, accountant, on_batch, start)
    stream.run(parts, feed)          # feed: per part, the positions of the entries to read
    stream.first_batch_s, stream.wait.record

Chooses who reads each part: TensorFlow itself for local files TensorFlow decodes (whole
batches: whole_batches.py), the Python stage (reader.Reader) for the parts with an entry that
needs it (a remote object, a tar member, Pillow, the EXIF orientation).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Callable, List, Optional

from estimator_vgg.config import Config
from estimator_vgg.devices import tower_devices
from estimator_vgg.estimator import build_estimator
from estimator_vgg.faults import fault
from estimator_vgg.input import MAX_RUNS, input_fn
from estimator_vgg.input_wait import InputWait
from estimator_vgg.manifest import part_name
from estimator_vgg.sources import Where, python_needed
from estimator_vgg.whole_batches import WholeBatchRows

log = logging.getLogger(__name__)


class PartStream:
    """Predicts the entries of a list of parts, in listing order, with one Estimator."""

    def __init__(self, cfg: Config, prepared, accountant, on_batch: Callable[..., None],
                 start: float):
        """prepared: the weights.PreparedWeights; accountant: the Accountant the rows go to;
        on_batch(held=0): called after every batch (held: rows kept back for their part);
        start: time.time() the job started (for the first batch's time)."""
        self.cfg, self.prepared, self.accountant = cfg, prepared, accountant
        self.on_batch, self.start = on_batch, start
        self.wait = InputWait()
        self.first_batch_s = 0.0
        self._est = None

    def run(self, parts, feed: List[List[int]]) -> None:
        keys = [p.entries[k] for p, ks in zip(parts, feed) for k in ks]
        where = [p.where_of(k) for p, ks in zip(parts, feed) for k in ks]
        files, reader, python_parts = self._readers(keys, where, feed)
        c = self.cfg
        try:
            self._est = build_estimator(c, self.prepared)
            log.info("towers: %s, %d images per step, %d parts%s",
                     ", ".join(tower_devices(c.devices)), c.devices.batch_size * c.towers,
                     len(feed), f" ({sum(python_parts)} read by the Python stage, "
                     f"{c.input.read_concurrency} threads)" if reader is not None else "")
            sizes = [len(f) for f in feed]
            if reader is None:  # local files only: whole batches, parts that lost one again
                WholeBatchRows(self, keys, files, sizes, [part_name(p.index) for p in parts]).run()
            else:
                self.hand_over(self.predict(self.input(keys, sizes, files, reader=reader,
                                                       python_parts=python_parts),
                                            [self.wait.hook()]))
        finally:
            if reader is not None:
                reader.close()
        self.wait.report(c.input.decode_threads, c.preprocess.fast_decode)

    def _readers(self, keys: List[str], where: List[Optional[Where]], feed: List[List[int]]):
        """(the local file of each entry or None, the Reader or None, which parts it serves).

        Only the parts with an entry that needs Python go through the Python stage; the others
        are read by TensorFlow."""
        if not any(w is not None for w in where):
            return None, None, None
        i, p = self.cfg.input, self.cfg.preprocess
        where = [w if w is not None else Where(os.path.join(str(i.dir), k))
                 for k, w in zip(keys, where)]
        files = [w.target for w in where]
        edges = [0, *itertools.accumulate(len(ks) for ks in feed)]
        bounds = list(zip(edges, edges[1:]))
        pillow = i.fallback_decoder == "pillow"
        python_parts = [python_needed(where[a:b], pillow, p.exif_orientation) for a, b in bounds]
        if sum(1 for _ in itertools.groupby(python_parts)) > MAX_RUNS:  # too fragmented
            python_parts = [True] * len(python_parts)
        if not any(python_parts):
            return files, None, None
        from estimator_vgg.reader import Reader
        entries = [(keys[k], where[k]) for (a, b), py in zip(bounds, python_parts) if py
                   for k in range(a, b)]
        reader = Reader(i, entries, self.accountant.read_errors, exif=p.exif_orientation)
        return files, reader, python_parts

    def input(self, keys, sizes, files, **kw):
        """The input_fn over `keys` cut into parts of `sizes`, failed images skipped."""
        return input_fn(self.cfg, keys, part_sizes=sizes, skip_bad=True, files=files, **kw)

    def predict(self, input_function, hooks=()):
        return self._est.predict(input_function, yield_single_examples=False,
                                 checkpoint_path=self.prepared.checkpoint, hooks=list(hooks))

    def first(self, batch) -> None:
        """Every batch passes here first (the crash tests' `batch` point)."""
        fault("batch")
        if not self.first_batch_s:
            self.first_batch_s = time.time() - self.start
            log.info("first batch after %.1f s", self.first_batch_s)

    def hand_over(self, batches) -> None:
        """Every row of the predicted batches to the accountant, in order."""
        for batch in batches:
            self.first(batch)
            for key, row in zip(batch["path"], batch["fc7"]):
                self.accountant.row(key.decode("utf-8", "surrogateescape"), row)
            self.on_batch()
