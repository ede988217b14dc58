"""The job: list the images, open the output, choose the executor, record the run.

The only module that wires the stages together (listing -> store -> an executor). The local
executor is here; the Ray executor is cluster.py; both do the per-part work of parts.py, and
neither imports this module.
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import tensorflow as tf

from estimator_vgg import __version__, probe, sources, weights
from estimator_vgg.config import Config
from estimator_vgg.devices import precision_hint, tower_devices
from estimator_vgg.remote import redact
from estimator_vgg.sources import Where
from estimator_vgg.manifest import ERRORS, Fingerprint, RunRecord
from estimator_vgg.parts import (Done, JobError, Part, check_error_fraction, counted,
                                 cut_parts, embed_parts)
from estimator_vgg.store import Store

log = logging.getLogger(__name__)

__all__ = ["JobError", "Summary", "run", "fingerprint"]


@dataclass
class Summary:
    files: int                     # entries in the listing (files, list lines, tar members)
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


def fingerprint(cfg: Config, located: weights.Located) -> Fingerprint:
    """What the features depend on; an output made with another fingerprint is not resumed."""
    return Fingerprint.of(cfg, located)


def _versions() -> dict:
    import numpy
    import pyarrow
    return {"estimator_vgg": __version__, "tensorflow": tf.__version__,
            "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def blocked_files(cfg: Config, todo: List[str], where: List[Optional[Where]]) -> Dict[str, tuple]:
    """Local files never to open, with their error: in a folder, symlinks out of input.dir
    (unless allowed); anywhere, FIFOs or devices named like images (reading one would block
    forever). A listed file is named by the user, so its symlinks are followed."""
    blocked = {}
    folder = cfg.input.list is None
    for rel, w in zip(todo, where):
        if w is None or w.remote:
            continue
        if (folder and not w.member and not cfg.input.follow_external_symlinks
                and probe.outside_root(cfg.input.dir, rel)):
            blocked[rel] = probe.classify(cfg.input.dir, rel, cfg.input.max_pixels, False)
        elif probe.special_file(w.target):
            blocked[rel] = ("not_a_file", "not a regular file (a FIFO, socket or device)")
    return blocked


def recorded_command(argv: List[str]) -> List[str]:
    """The command line as the manifest records it: storage_options values and URL query
    strings (credentials, presigned signatures) redacted."""
    out = []
    for a in argv:
        if a.startswith(("input.storage_options", "--set=input.storage_options")) and "=" in a:
            a = a.split("=", 1)[0] + "=<redacted>"
        out.append(redact(a))
    return out


def run(cfg: Config, progress=None) -> Summary:
    """Embed every entry of the input (a folder, a prefix or a list) into <output.dir>;
    resume what an earlier run began.

    progress: an object with start(total), update(done, errors, shards=""), close() (see
    progress.py); default: a log line every 30 s.
    """
    from estimator_vgg.progress import LogProgress

    progress = progress or LogProgress()
    start = time.time()
    listing = sources.build(cfg)
    if not listing.keys:
        where = (f"input.dir {redact(str(cfg.input.dir))} holds no file with an image "
                 f"extension ({', '.join(cfg.input.extensions)}); check the folder or "
                 f"input.extensions")
        raise JobError(where + (" or input.expand_tars" if not cfg.input.expand_tars else ""))
    located = weights.locate(cfg.model)  # hashed for the fingerprint; converted only if needed
    store = Store(cfg.output.dir, cfg.output.format)
    store.open(fingerprint(cfg, located), cfg.to_dict(), cfg.output.overwrite)
    sources.check_appended(cfg, listing, store.dir)
    first, repeats = sources.committed_counts(store.dir, store.manifest)
    todo_at = sources.todo(listing, first, repeats)
    todo = [listing.keys[n] for n in todo_at]
    counts_before = store.manifest.count()
    feats_before, errs_before = counts_before["features"], counts_before["errors"]
    dups_before = sum(repeats.values())
    log.info("found %d entries in %s: %d already done, %d to do", len(listing.keys),
             sources.describe(cfg, listing), len(listing.keys) - len(todo), len(todo))
    record = RunRecord(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       command=recorded_command(list(sys.argv)),
                       versions=_versions(), devices=tower_devices(cfg.devices))
    if not todo:
        record.seconds = round(time.time() - start, 3)
        store.finish(record, complete=True)
        return Summary(len(listing.keys), feats_before, _error_counts(store), 0,
                       time.time() - start, cfg.output.dir, noop=True)

    hint = precision_hint(cfg.devices, cfg.model.precision)
    if hint and cfg.run.executor == "local":  # Ray's nodes may have other CPUs than this one
        log.info("%s", hint)
    where = [listing.where[n] for n in todo_at]
    blocked = blocked_files(cfg, todo, where)
    preset = {k: listing.preset[n] for k, n in enumerate(todo_at) if n in listing.preset}
    parts = cut_parts(todo, store.next_index(), cfg.output.rows_per_part, where, preset)
    seen_before = feats_before + errs_before - dups_before
    errors_before = errs_before - dups_before

    progress.start(len(todo))
    try:
        if cfg.run.executor == "ray":
            from estimator_vgg import cluster
            done = cluster.run_shards(cfg, located, store, parts, blocked, progress,
                                      seen_before, errors_before, start)
        else:
            done = _run_here(cfg, located, store, parts, blocked, progress,
                             seen_before, errors_before, start)
    finally:
        progress.close()
    new_dups = len(done.errors) - counted(done.errors)
    check_error_fraction(cfg, seen_before + len(todo) - new_dups,
                         errors_before + counted(done.errors), done.errors, final=True)
    seconds = time.time() - start
    counts = _error_counts(store)
    record.new_files, record.new_features = len(todo), done.features
    record.new_errors = probe.reason_counts(done.errors)
    record.seconds, record.first_batch_s = round(seconds, 3), round(done.first_batch_s, 3)
    record.images_per_s = round(done.features / seconds, 3)
    record.details = done.record
    store.finish(record, complete=True)
    return Summary(len(listing.keys), feats_before + done.features, counts, len(todo), seconds,
                   cfg.output.dir, first_batch_s=done.first_batch_s,
                   new_features=done.features, executor=cfg.run.executor)


def _run_here(cfg: Config, located: weights.Located, store: Store, parts: List[Part],
              blocked: Dict[str, tuple], progress, seen_before: int, errors_before: int,
              start: float) -> Done:
    """The local executor: this process, this machine's devices, parts committed in order."""
    return embed_parts(cfg, lambda: weights.prepare(cfg.model, located), store, parts, blocked,
                       seen_before, errors_before, start, on_progress=progress.update)


def _error_counts(store: Store) -> Dict[str, int]:
    """Errors by reason over every committed part."""
    import pyarrow.parquet as pq

    reasons: Counter = Counter()
    for p in store.parts:
        if p.errors:
            f = store.dir / ERRORS / f"{p.name}.parquet"
            reasons.update(pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    return dict(sorted(reasons.items()))
