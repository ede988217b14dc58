"""The per-part work both executors share: stream the files of a list of parts through the
Estimator and commit each part whole, accounting for every file.

    done = embed_parts(cfg, prepare, store, parts, blocked)

Every file of a part ends in exactly one of two tables: features (its fc7 row) or errors (why
it failed). Rows come back from the Estimator in listing order with their paths; a file the
pipeline dropped is noticed as a gap in that order and classified (probe.py). The local
executor (runner.py) hands it the output's Store; a Ray shard (cluster.py) a writer into its
staging folder. Neither executor reaches into the other.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg import probe
from estimator_vgg.config import Config
from estimator_vgg.devices import tower_devices
from estimator_vgg.estimator import build_estimator
from estimator_vgg.faults import fault
from estimator_vgg.input import MAX_RUNS, input_fn
from estimator_vgg.listing import display_path
from estimator_vgg.manifest import part_name
from estimator_vgg.remote import FetchError, redact
from estimator_vgg.sources import DUPLICATE, Where, python_needed, read_bytes

log = logging.getLogger(__name__)

MIN_FILES_FOR_EARLY_STOP = 100
ErrorRow = Tuple[str, str, str]   # (path, reason, message)


class JobError(RuntimeError):
    """The job cannot go on; the message names the file or setting and what to do."""


@dataclass
class Part:
    """One output part being filled: its listed entries, and the rows accounted for so far."""
    index: int
    files: List[str]                       # the output path of every entry, in order
    where: Optional[List[Optional[Where]]] = None  # where each entry's bytes are (default:
    # the file under input.dir); None for an entry whose row is preset
    preset: Dict[int, Tuple[str, str]] = field(default_factory=dict)  # position: (reason, msg)
    pos: int = 0                           # entries accounted for so far
    paths: List[str] = field(default_factory=list)
    fc7: List[np.ndarray] = field(default_factory=list)
    errors: List[ErrorRow] = field(default_factory=list)

    def fed(self, blocked: Dict[str, tuple]) -> List[int]:
        """Positions of the entries to read (not preset, not blocked)."""
        return [k for k, f in enumerate(self.files) if k not in self.preset and f not in blocked]


@dataclass
class Done:
    """What one run embedded: rows, error rows, time to the first batch, executor details."""
    features: int
    errors: List[ErrorRow]
    first_batch_s: float
    record: dict = field(default_factory=dict)  # extra fields for the manifest's run record


def cut_parts(todo: Sequence[str], first_index: int, size: int,
              where: Optional[Sequence[Optional[Where]]] = None,
              preset: Optional[Dict[int, Tuple[str, str]]] = None) -> List[Part]:
    """The entries to do, cut into parts of `size` numbered from `first_index`; where and
    preset (by index into `todo`) are cut with them."""
    preset = preset or {}
    return [Part(first_index + k, list(todo[i:i + size]),
                 list(where[i:i + size]) if where is not None else None,
                 {n - i: preset[n] for n in range(i, min(i + size, len(todo))) if n in preset})
            for k, i in enumerate(range(0, len(todo), size))]


def counted(errors: Sequence[ErrorRow]) -> int:
    """Error rows that count toward input.max_error_fraction (a repeated list entry does not)."""
    return sum(1 for _, reason, _ in errors if reason != DUPLICATE)


def check_error_fraction(cfg: Config, seen: int, errors: int, run_errors: List[ErrorRow],
                         final: bool) -> None:
    """Stop the job when more than input.max_error_fraction of the files seen failed."""
    limit = cfg.input.max_error_fraction
    if seen and (final or seen >= MIN_FILES_FOR_EARLY_STOP) and errors / seen > limit:
        raise JobError(f"{errors} of {seen} files failed ({errors / seen:.1%}), above "
                       f"input.max_error_fraction={limit}: "
                       f"{probe.reason_counts(run_errors)} in this run. The parts done so "
                       f"far are kept; see {cfg.output.dir / 'errors'}, fix the "
                       f"inputs or raise the limit, and rerun to resume")


class Accountant:
    """Walks the expected listing as rows arrive; gaps become error rows; full parts commit."""

    def __init__(self, cfg: Config, store, parts: List[Part], blocked: Dict[str, tuple],
                 seen_before: int, errors_before: int, early_stop: bool = True,
                 read_errors: Optional[Dict[str, Tuple[str, str]]] = None):
        """store: anything with commit(index, paths, fc7, errors) (a Store, or a Ray shard's
        part writer); early_stop: check input.max_error_fraction after each part;
        read_errors: what the Python stage (reader.py) could not read, by path."""
        self.cfg, self.store, self.parts, self.blocked = cfg, store, parts, blocked
        self.read_errors = read_errors if read_errors is not None else {}
        self.early_stop = early_stop
        self.current = 0
        self.features = 0
        self.errors: List[ErrorRow] = []
        self.seen_before, self.errors_before = seen_before, errors_before
        self.seen = 0

    @property
    def accounted(self) -> int:
        return self.features + len(self.errors)

    def _classify(self, part: Part, rel: str) -> Tuple[str, str]:
        i, p = self.cfg.input, self.cfg.preprocess
        where = part.where[part.pos] if part.where is not None else None
        if where is None or (i.list is None and not where.remote and not where.member):
            return probe.classify(i.dir, rel, i.max_pixels, i.follow_external_symlinks, p)
        if not where.remote and not where.member:  # a listed local file: named, so followed
            return probe.classify("", where.target, i.max_pixels, True, p)
        try:
            data = read_bytes(self.cfg, where)
        except FetchError as e:
            return e.reason, e.message
        return probe.classify_bytes(data, i.max_pixels, p, i.fallback_decoder == "pillow")

    def _fail(self, part: Part, rel: str) -> None:
        if part.pos in part.preset:
            reason, message = part.preset[part.pos]
        elif rel in self.blocked:
            reason, message = self.blocked[rel]
        elif rel in self.read_errors:
            reason, message = self.read_errors.pop(rel)
        else:
            reason, message = self._classify(part, rel)
        log.log(logging.INFO if reason == DUPLICATE else logging.WARNING, "%s: %s (%s)",
                redact(display_path(rel)), reason, message)
        part.errors.append((rel, reason, message))
        self.errors.append((rel, reason, message))

    def _commit_full_parts(self) -> None:
        while (self.current < len(self.parts)
               and self.parts[self.current].pos == len(self.parts[self.current].files)):
            part = self.parts[self.current]
            fc7 = np.concatenate(part.fc7) if part.fc7 else None
            self.store.commit(part.index, part.paths, fc7, part.errors)
            self.seen += len(part.files) - (len(part.errors) - counted(part.errors))
            part.fc7, part.paths = [], []  # free the rows
            self.current += 1
            if self.early_stop:
                check_error_fraction(self.cfg, self.seen_before + self.seen,
                                     self.errors_before + counted(self.errors), self.errors,
                                     final=False)

    def _gap_before(self, rel: str) -> int:
        """How many expected files precede `rel` (they were dropped by the pipeline)."""
        gap = 0
        for part in self.parts[self.current:]:
            for f in part.files[part.pos if part is self.parts[self.current] else 0:]:
                if f == rel:
                    return gap
                gap += 1
        raise JobError(f"internal error: a row for {redact(rel)!r} arrived that the listing "
                       f"does not expect at this point; the parts written so far are whole, "
                       f"rerun to resume")

    def row(self, rel: str, fc7: np.ndarray) -> None:
        self._commit_full_parts()
        part = self.parts[self.current]
        if part.files[part.pos] != rel:
            for _ in range(self._gap_before(rel)):
                self._fail(part, part.files[part.pos])
                part.pos += 1
                self._commit_full_parts()
                part = self.parts[self.current]
        part.paths.append(rel)
        part.fc7.append(fc7[None, :])
        part.pos += 1
        self.features += 1

    def commit_ready(self) -> None:
        """Commit every part whose rows are all in (row() does it at the next row)."""
        self._commit_full_parts()

    def finish(self) -> None:
        """The stream ended: every file not yet accounted for failed."""
        self._commit_full_parts()
        for part in self.parts[self.current:]:
            while part.pos < len(part.files):
                self._fail(part, part.files[part.pos])
                part.pos += 1
            self._commit_full_parts()


INPUT_BOUND_SHARE = 0.15  # above it, the log says the input pipeline set the pace


class InputWait:
    """What share of the model's step time went to waiting for the input pipeline, from the
    step stats of a sample of steps (every `every`-th, after the first): the time the
    Estimator's IteratorGetNext op blocked, over the step's wall time."""

    def __init__(self, every: int = 10):
        self.every, self.step, self.traced = every, 0, 0
        self.wait_us = self.step_us = 0

    def hook(self):
        import tensorflow as tf

        meter = self

        class _Hook(tf.compat.v1.train.SessionRunHook):
            def before_run(self, run_context):
                meter.step += 1
                if meter.step % meter.every != 2 % meter.every:
                    return None
                return tf.compat.v1.train.SessionRunArgs(None, options=tf.compat.v1.RunOptions(
                    trace_level=tf.compat.v1.RunOptions.SOFTWARE_TRACE))

            def after_run(self, run_context, run_values):
                meter.add(run_values.run_metadata.step_stats)

        return _Hook()

    def add(self, step_stats) -> None:
        starts, ends, wait = [], [], 0
        for dev in step_stats.dev_stats:
            for node in dev.node_stats:
                starts.append(node.all_start_micros)
                ends.append(node.all_start_micros + node.all_end_rel_micros)
                if node.node_name.split(":")[0] == "IteratorGetNext":
                    wait = max(wait, node.all_end_rel_micros)
        if starts:
            self.traced += 1
            self.wait_us += wait
            self.step_us += max(ends) - min(starts)

    @property
    def share(self) -> float:
        return self.wait_us / self.step_us if self.step_us else 0.0

    def report(self, cfg: Config) -> None:
        if not self.traced:
            return
        log.info("input: the model waited for the input pipeline %.0f%% of its step time "
                 "(%d steps traced)", 100 * self.share, self.traced)
        if self.share > INPUT_BOUND_SHARE:
            tips = [f"raise input.decode_threads (now {cfg.input.decode_threads})"]
            if not cfg.preprocess.fast_decode:
                tips.append("set preprocess.fast_decode: true")
            log.warning("input: the input pipeline, not the devices, set the pace of this run; "
                        "%s (docs/devices.md, \"Decoding\")", " or ".join(tips))


def _stream_rows(cfg: Config, prepared, feed: List[List[int]], parts: List[Part],
                 accountant: Accountant, start: float, on_batch: Callable[..., None],
                 wait: InputWait, read_errors: Dict[str, Tuple[str, str]]) -> float:
    """Predict the entries at the positions `feed` (one list per part) and hand every row to
    the accountant in listing order; returns the seconds from `start` (a time.time()) to the
    first batch."""
    first_batch_s = 0.0
    keys = [p.files[k] for p, ks in zip(parts, feed) for k in ks]
    where = [p.where[k] if p.where is not None else None for p, ks in zip(parts, feed)
             for k in ks]
    reader, python_parts = None, None
    if any(w is not None for w in where):
        where = [w if w is not None else Where(os.path.join(str(cfg.input.dir), k))
                 for k, w in zip(keys, where)]
        # Only the parts with an entry that needs Python (a remote read, a tar member, Pillow,
        # EXIF) go through the Python stage; the others are read by TensorFlow as before.
        bounds = [0, *itertools.accumulate(len(ks) for ks in feed)]
        python_parts = [python_needed(cfg, where[a:b]) for a, b in zip(bounds, bounds[1:])]
        if sum(1 for _ in itertools.groupby(python_parts)) > MAX_RUNS:  # too fragmented
            python_parts = [True] * len(python_parts)
        if any(python_parts):
            from estimator_vgg.reader import Reader
            reader = Reader(cfg, [(keys[i], where[i]) for (a, b), py in
                                  zip(zip(bounds, bounds[1:]), python_parts) if py
                                  for i in range(a, b)], read_errors)
        else:
            python_parts = None
    files = [w.target for w in where] if any(w is not None for w in where) else None
    try:
        est = build_estimator(cfg, prepared)
        log.info("towers: %s, %d images per step, %d parts%s",
                 ", ".join(tower_devices(cfg.devices)), cfg.devices.batch_size * cfg.towers,
                 len(feed), f" ({sum(python_parts)} read by the Python stage, "
                 f"{cfg.input.read_concurrency} threads)" if reader is not None else "")
        sizes = [len(f) for f in feed]

        def predict(input_function, hooks=()):
            return est.predict(input_function, yield_single_examples=False,
                               checkpoint_path=prepared.checkpoint, hooks=list(hooks))

        def first(batch) -> None:
            nonlocal first_batch_s
            fault("batch")
            if not first_batch_s:
                first_batch_s = time.time() - start
                log.info("first batch after %.1f s", first_batch_s)

        if reader is None:  # local files only: whole batches, parts that lost one again
            _whole_batch_rows(cfg, keys, files, sizes, [part_name(p.index) for p in parts],
                              predict, first, accountant, on_batch, wait)
            return first_batch_s
        _hand_over(predict(input_fn(cfg, keys, part_sizes=sizes, skip_bad=True, files=files,
                                    reader=reader, python_parts=python_parts), [wait.hook()]),
                   first, accountant, on_batch)
    finally:
        if reader is not None:
            reader.close()
    return first_batch_s


def _hand_over(batches, first, accountant: Accountant, on_batch: Callable[..., None]) -> None:
    """Every row of the predicted batches to the accountant, in order."""
    for batch in batches:
        first(batch)
        for key, row in zip(batch["path"], batch["fc7"]):
            accountant.row(key.decode("utf-8", "surrogateescape"), row)
        on_batch()


REDONE_PARTS = 2  # parts computed again after losing a batch before the run stops trying


def _whole_batch_rows(cfg: Config, keys: List[str], files: Optional[List[str]],
                      sizes: List[int], names: List[str], predict, first, accountant: Accountant,
                      on_batch: Callable[..., None], wait: InputWait) -> None:
    """The rows of local files, fast: input_fn(whole_batches=True) drops a batch whole when
    any of its images fails, so a part is handed to the accountant only once all its batches
    arrived; a part that lost one is computed again the default way (image by image, failed
    images dropped, batches refilled), which is what every part gets without this, so the
    rows are the same either way, to the bit. After REDONE_PARTS such parts (a folder with
    many bad files) the rest of the run goes the default way: at most that many parts are
    computed twice."""
    bounds = [0, *itertools.accumulate(sizes)]
    redone = 0

    def position(name: str, after: int) -> int:  # batches come in order: search forward
        n = after
        while keys[n] != name:
            n += 1
        return n

    def default_way(a: int, b: int) -> None:  # parts a..b-1
        lo, hi = bounds[a], bounds[b]
        if lo == hi:
            return
        _hand_over(predict(input_fn(cfg, keys[lo:hi], part_sizes=sizes[a:b], skip_bad=True,
                                    files=files[lo:hi] if files is not None else None)),
                   first, accountant, on_batch)
        accountant.commit_ready()

    q, got = 0, []  # the part being filled and its rows so far (short: it lost a batch)

    def close_part() -> None:
        nonlocal q, got, redone
        if len(got) != sizes[q]:
            redone += 1
            log.info("%s lost a batch to a file that failed: computing it again image by "
                     "image", names[q])
            default_way(q, q + 1)
        else:
            for key, row in got:
                accountant.row(key, row)
            accountant.commit_ready()  # now, not at the next part's first row
            on_batch()
        q, got = q + 1, []

    main = predict(input_fn(cfg, keys, part_sizes=sizes, skip_bad=True, files=files,
                            whole_batches=True), [wait.hook()])
    try:
        for batch in main:
            first(batch)
            rows = [k.decode("utf-8", "surrogateescape") for k in batch["path"]]
            at = position(rows[0], bounds[q] + len(got))
            while at >= bounds[q + 1] and redone < REDONE_PARTS:  # the stream is past part q
                close_part()
            if redone >= REDONE_PARTS:
                break
            got.extend(zip(rows, batch["fc7"]))
            if at + len(rows) == bounds[q + 1]:
                close_part()
            else:
                on_batch(len(got))  # progress counts the rows held for the part
    finally:
        main.close()
    if redone >= REDONE_PARTS and q < len(sizes):
        log.info("%d parts lost batches to files that failed: the rest of this run is decoded "
                 "image by image", redone)
    if q < len(sizes):  # from the part being filled, whatever it holds; or the stream ended
        default_way(q, len(sizes))  # before these parts' last batches came


def embed_parts(cfg: Config, prepare: Callable[[], object], store, parts: List[Part],
                blocked: Dict[str, tuple], seen_before: int = 0, errors_before: int = 0,
                start: float = 0.0, early_stop: bool = True,
                on_progress: Callable[[int, int], None] = lambda done, errors: None) -> Done:
    """Embed every entry of `parts` and commit each part to `store` in order.

    prepare: returns the weights.PreparedWeights; called only when some entry is to be read
    (a run whose entries are all blocked or preset converts nothing). blocked: files never to
    open, with their error row. seen_before, errors_before: entries and counted errors of
    earlier runs, for input.max_error_fraction (checked after each part when early_stop).
    on_progress(done, errors) after every batch and at the end.
    """
    start = start or time.time()
    feed = [p.fed(blocked) for p in parts]
    read_errors: Dict[str, Tuple[str, str]] = {}
    accountant = Accountant(cfg, store, parts, blocked, seen_before, errors_before, early_stop,
                            read_errors)
    first_batch_s = 0.0
    wait = InputWait()
    shown = [0]

    def progress(held: int = 0) -> None:  # rows held for a part count; never goes back
        shown[0] = max(shown[0], accountant.accounted + held)
        on_progress(shown[0], len(accountant.errors))

    if any(feed):
        first_batch_s = _stream_rows(cfg, prepare(), feed, parts, accountant, start,
                                     on_batch=progress,
                                     wait=wait, read_errors=read_errors)
        wait.report(cfg)
    accountant.finish()  # what the stream did not deliver failed, or was never fed
    on_progress(accountant.accounted, len(accountant.errors))
    record = {"input_wait_share": round(wait.share, 3)} if wait.traced else {}
    return Done(accountant.features, accountant.errors, first_batch_s, record)
