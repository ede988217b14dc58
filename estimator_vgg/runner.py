"""The job: list the images, prepare the weights, stream Estimator.predict into committed parts.

The only module that wires the stages together (listing -> input_fn -> estimator -> store).
Every listed file ends in exactly one of two tables: features (its fc7 row) or errors (why it
failed). Rows come back from the Estimator in listing order with their paths; a file the
pipeline dropped is noticed as a gap in that order and classified (probe.py).
"""
from __future__ import annotations

import logging
import platform
from collections import Counter
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from estimator_vgg import __version__, preprocess, probe, weights
from estimator_vgg.config import Config
from estimator_vgg.estimator import build_estimator, tower_devices
from estimator_vgg.input import input_fn
from estimator_vgg.listing import display_path, list_images
from estimator_vgg.store import Store, fault
from estimator_vgg.writer import ERRORS, part_name

log = logging.getLogger(__name__)

MIN_FILES_FOR_EARLY_STOP = 100
PREPROCESS_RECIPE = "decode-rgb, resize, caffe-bgr-mean/v1"


class JobError(RuntimeError):
    """The job cannot go on; the message names the file or setting and what to do."""


@dataclass
class Summary:
    files: int                     # files in the listing
    features: int                  # rows in the features table (all runs)
    errors: Dict[str, int]         # error rows by reason (all runs)
    new_files: int                 # files this run processed
    seconds: float
    output: Path
    noop: bool = False
    first_batch_s: float = 0.0     # local: the first batch; ray: the first shard done
    new_features: int = 0
    executor: str = "local"

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def images_per_s(self) -> float:
        return self.new_features / self.seconds if self.seconds else 0.0


def fingerprint(cfg: Config, located: weights.Located) -> dict:
    """What the features depend on; an output made with another fingerprint is not resumed."""
    return {
        "model": "vgg16/fc7",
        "precision": cfg.model.precision,
        "weights_sha256": located.sha256,
        "synthetic_weights": located.synthetic,
        "preprocessing": {"recipe": PREPROCESS_RECIPE, "resize": cfg.preprocess.resize,
                          "antialias": cfg.preprocess.antialias,
                          "image_size": preprocess.IMAGE_SIZE,
                          "mean_bgr": list(preprocess.CAFFE_BGR_MEAN),
                          # Only when on: outputs made before the option keep their fingerprint.
                          **({"jpeg_dct_scaling": True}
                             if cfg.preprocess.jpeg_dct_scaling else {})},
        "output_format": cfg.output.format,
        # The rows' paths are relative to it: another folder's a.jpg is another image.
        "input_dir": str(cfg.input.dir),
    }


def _versions() -> dict:
    import numpy
    import pyarrow
    return {"estimator_vgg": __version__, "tensorflow": tf.__version__,
            "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


@dataclass
class _Part:
    index: int
    files: List[str]                       # every listed file of the part, in order
    pos: int = 0                           # files accounted for so far
    paths: List[str] = field(default_factory=list)
    fc7: List[np.ndarray] = field(default_factory=list)
    errors: List[Tuple[str, str, str]] = field(default_factory=list)


class _Accountant:
    """Walks the expected listing as rows arrive; gaps become error rows; full parts commit."""

    def __init__(self, cfg: Config, store, parts: List[_Part], blocked: Dict[str, tuple],
                 seen_before: int, errors_before: int, early_stop: bool = True):
        """store: anything with commit(index, paths, fc7, errors) (a Store, or a Ray shard's
        part writer); early_stop: check input.max_error_fraction after each part."""
        self.cfg, self.store, self.parts, self.blocked = cfg, store, parts, blocked
        self.early_stop = early_stop
        self.current = 0
        self.features = 0
        self.errors: List[Tuple[str, str, str]] = []
        self.seen_before, self.errors_before = seen_before, errors_before
        self.seen = 0

    def _fail(self, part: _Part, rel: str) -> None:
        if rel in self.blocked:
            reason, message = self.blocked[rel]
        else:
            reason, message = probe.classify(self.cfg.input.dir, rel, self.cfg.input.max_pixels,
                                             self.cfg.input.follow_external_symlinks,
                                             self.cfg.preprocess.jpeg_dct_scaling)
        log.warning("%s: %s (%s)", display_path(rel), reason, message)
        part.errors.append((rel, reason, message))
        self.errors.append((rel, reason, message))

    def _commit_full_parts(self) -> None:
        while (self.current < len(self.parts)
               and self.parts[self.current].pos == len(self.parts[self.current].files)):
            part = self.parts[self.current]
            fc7 = np.concatenate(part.fc7) if part.fc7 else None
            self.store.commit(part.index, part.paths, fc7, part.errors)
            self.seen += len(part.files)
            part.fc7, part.paths = [], []  # free the rows
            self.current += 1
            if self.early_stop:
                self.check_error_fraction(final=False)

    def _gap_before(self, rel: str) -> int:
        """How many expected files precede `rel` (they were dropped by the pipeline)."""
        gap = 0
        for part in self.parts[self.current:]:
            for f in part.files[part.pos if part is self.parts[self.current] else 0:]:
                if f == rel:
                    return gap
                gap += 1
        raise JobError(f"internal error: a row for {rel!r} arrived that the listing does not "
                       f"expect at this point; the parts written so far are whole, rerun to "
                       f"resume")

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

    def finish(self) -> None:
        """The stream ended: every file not yet accounted for failed."""
        self._commit_full_parts()
        for part in self.parts[self.current:]:
            while part.pos < len(part.files):
                self._fail(part, part.files[part.pos])
                part.pos += 1
            self._commit_full_parts()

    def check_error_fraction(self, final: bool) -> None:
        check_error_fraction(self.cfg, self.seen_before + self.seen,
                             self.errors_before + len(self.errors), self.errors, final)


def check_error_fraction(cfg: Config, seen: int, errors: int,
                         run_errors: List[Tuple[str, str, str]], final: bool) -> None:
    """Stop the job when more than input.max_error_fraction of the files seen failed."""
    limit = cfg.input.max_error_fraction
    if seen and (final or seen >= MIN_FILES_FOR_EARLY_STOP) and errors / seen > limit:
        raise JobError(f"{errors} of {seen} files failed ({errors / seen:.1%}), above "
                       f"input.max_error_fraction={limit}: "
                       f"{probe.reason_counts(run_errors)} in this run. The parts done so "
                       f"far are kept; see {cfg.output.dir / 'errors'}, fix the "
                       f"inputs or raise the limit, and rerun to resume")


def stream_rows(cfg: Config, prepared: weights.PreparedWeights, feed: List[List[str]],
                accountant: _Accountant, start: float, on_batch=lambda: None) -> float:
    """Predict the files of `feed` (one list per part) and hand every row to the accountant in
    listing order; returns the seconds from `start` (a time.time()) to the first batch, or 0
    when nothing was fed."""
    first_batch_s = 0.0
    flat = [f for files in feed for f in files]
    if not flat:
        return first_batch_s
    est = build_estimator(cfg, prepared)
    log.info("towers: %s, %d images per step, %d parts", ", ".join(tower_devices(cfg.devices)),
             cfg.devices.batch_size * cfg.towers, len(feed))
    predictions = est.predict(
        input_fn(cfg, flat, part_sizes=[len(f) for f in feed], skip_bad=True),
        yield_single_examples=False, checkpoint_path=prepared.checkpoint)
    for batch in predictions:
        fault("batch")
        if not first_batch_s:
            first_batch_s = time.time() - start
            log.info("first batch after %.1f s", first_batch_s)
        for key, row in zip(batch["path"], batch["fc7"]):
            accountant.row(key.decode("utf-8", "surrogateescape"), row)
        on_batch()
    return first_batch_s


def blocked_files(cfg: Config, todo: List[str]) -> Dict[str, tuple]:
    """Files never to open, with their error: symlinks out of input.dir (unless allowed), and
    FIFOs or devices named like images (reading one would block forever)."""
    blocked = {}
    for rel in todo:
        if not cfg.input.follow_external_symlinks and probe.outside_root(cfg.input.dir, rel):
            blocked[rel] = probe.classify(cfg.input.dir, rel, cfg.input.max_pixels, False)
        elif probe.special_file(cfg.input.dir / rel):
            blocked[rel] = ("not_a_file", "not a regular file (a FIFO, socket or device)")
    return blocked


def run(cfg: Config, progress=None) -> Summary:
    """Embed every image under input.dir into <output.dir>; resume what an earlier run began.

    progress: an object with start(total), update(done, errors, shards=""), close() (see
    progress.py); default: a log line every 30 s.
    """
    from estimator_vgg.progress import LogProgress

    progress = progress or LogProgress()
    start = time.time()
    listing = list_images(cfg.input.dir, cfg.input.extensions)
    if not listing:
        raise JobError(f"input.dir {cfg.input.dir} holds no file with an image extension "
                       f"({', '.join(cfg.input.extensions)}); check the folder or "
                       f"input.extensions")
    located = weights.locate(cfg.model)  # hashed for the fingerprint; converted only if needed
    store = Store(cfg.output.dir, cfg.output.format)
    store.open(fingerprint(cfg, located), cfg.to_dict(), cfg.output.overwrite)
    done_before = store.done_paths()
    todo = [p for p in listing if display_path(p) not in done_before]
    feats_before = sum(p["features"] for p in store.parts)
    errs_before = sum(p["errors"] for p in store.parts)
    log.info("found %d images under %s: %d already done, %d to do", len(listing),
             cfg.input.dir, len(listing) - len(todo), len(todo))
    run_record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
                  "versions": _versions(), "devices": tower_devices(cfg.devices)}
    if not todo:
        store.finish(dict(run_record, new_files=0, seconds=round(time.time() - start, 3)),
                     complete=True)
        return Summary(len(listing), feats_before, _error_counts(store), 0,
                       time.time() - start, cfg.output.dir, noop=True)

    blocked = blocked_files(cfg, todo)
    size = cfg.output.rows_per_part
    first = store.next_index()
    parts = [_Part(first + k, todo[i:i + size]) for k, i in enumerate(range(0, len(todo), size))]

    progress.start(len(todo))
    try:
        if cfg.run.executor == "ray":
            from estimator_vgg import cluster
            done = cluster.run_shards(cfg, located, store, parts, blocked, progress,
                                      feats_before + errs_before, errs_before, start)
        else:
            done = _run_here(cfg, located, store, parts, blocked, progress,
                             feats_before + errs_before, errs_before, start)
    finally:
        progress.close()
    check_error_fraction(cfg, feats_before + errs_before + len(todo),
                         errs_before + len(done.errors), done.errors, final=True)
    seconds = time.time() - start
    counts = _error_counts(store)
    store.finish(dict(run_record, new_files=len(todo), new_features=done.features,
                      new_errors=probe.reason_counts(done.errors),
                      seconds=round(seconds, 3), first_batch_s=round(done.first_batch_s, 3),
                      images_per_s=round(done.features / seconds, 3), **done.record),
                 complete=True)
    return Summary(len(listing), feats_before + done.features, counts, len(todo), seconds,
                   cfg.output.dir, first_batch_s=done.first_batch_s,
                   new_features=done.features, executor=cfg.run.executor)


@dataclass
class Done:
    """What one run embedded: rows, error rows, time to the first batch, executor details."""
    features: int
    errors: List[Tuple[str, str, str]]
    first_batch_s: float
    record: dict = field(default_factory=dict)  # extra fields for the manifest's run record


def _run_here(cfg: Config, located: weights.Located, store: Store, parts: List[_Part],
              blocked: Dict[str, tuple], progress, seen_before: int, errors_before: int,
              start: float) -> Done:
    """The local executor: this process, this machine's devices, parts committed in order."""
    feed = [[f for f in p.files if f not in blocked] for p in parts]
    accountant = _Accountant(cfg, store, parts, blocked, seen_before, errors_before)
    first_batch_s = 0.0
    if any(feed):
        prepared = weights.prepare(cfg.model, located)
        first_batch_s = stream_rows(cfg, prepared, feed, accountant, start, on_batch=lambda: (
            progress.update(accountant.features + len(accountant.errors),
                            len(accountant.errors))))
    accountant.finish()  # what the stream did not deliver failed, or was never fed
    progress.update(accountant.features + len(accountant.errors), len(accountant.errors))
    return Done(accountant.features, accountant.errors, first_batch_s)


def _error_counts(store: Store) -> Dict[str, int]:
    """Errors by reason over every committed part."""
    import pyarrow.parquet as pq

    reasons: Counter = Counter()
    for p in store.parts:
        if p["errors"]:
            f = store.dir / ERRORS / f"{part_name(p['index'])}.parquet"
            reasons.update(pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    return dict(sorted(reasons.items()))
