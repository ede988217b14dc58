"""The job: list the images, open the output, choose the executor, record the run.

    summary = run(cfg)                     # the command line's job, from a notebook too

The only module that wires the stages together (listing -> store -> an executor): it builds
the Job (job.py) that either executor takes, the local one (parts.run_here) or Ray's
(cluster.run); neither imports this module.
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

from estimator_vgg import __version__, cluster, parts, probe, sources, weights
from estimator_vgg.accounting import cut_parts
from estimator_vgg.budget import ErrorBudget, reason_counts
from estimator_vgg.config import Config
from estimator_vgg.devices import precision_hint, tower_devices
from estimator_vgg.job import Job, JobError
from estimator_vgg.manifest import ERRORS, Fingerprint, RunRecord
from estimator_vgg.output import Output
from estimator_vgg.remote import redact
from estimator_vgg.sections import InputConfig
from estimator_vgg.sources import Where
from estimator_vgg.bucket_store import open_store
from estimator_vgg.store import Store

log = logging.getLogger(__name__)

__all__ = ["JobError", "Summary", "run", "fingerprint"]

# What runs the parts, by run.executor: each takes the Job and returns a job.Done.
EXECUTORS = {"local": parts.run_here, "ray": cluster.run}


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
    exit_code: int = 0             # 0 all embedded; 3 some in the errors table; 1 too many

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


def blocked_files(input_cfg: InputConfig, todo: List[str],
                  where: List[Optional[Where]]) -> Dict[str, tuple]:
    """Local files never to open, with their error: in a folder, symlinks out of input.dir
    (unless allowed); anywhere, FIFOs or devices named like images (reading one would block
    forever). A listed file is named by the user, so its symlinks are followed."""
    i = input_cfg
    blocked = {}
    folder = i.list is None
    for rel, w in zip(todo, where):
        if w is None or w.remote:
            continue
        if (folder and not w.member and not i.follow_external_symlinks
                and probe.outside_root(i.dir, rel)):
            blocked[rel] = probe.classify(i.dir, rel, i.max_pixels, False)
        elif probe.special_file(w.target):
            blocked[rel] = ("not_a_file", "not a regular file (a FIFO, socket or device)")
    return blocked


def recorded_command(argv: List[str]) -> List[str]:
    """The command line as the manifest records it: storage_options values and URL query
    strings (credentials, presigned signatures) redacted."""
    out = []
    for a in argv:
        if a.startswith(("input.storage_options", "output.storage_options")) and "=" in a:
            a = a.split("=", 1)[0] + "=<redacted>"
        out.append(redact(a))
    return out


def run(cfg: Config, progress=None) -> Summary:
    """Embed every entry of the input (a folder, a prefix or a list) into <output.dir>;
    resume what an earlier run began.

    progress: an object with start(total), update(done, errors, shards=""), close() (see
    progress.py); default: a log line every 30 s.
    """
    start = time.time()
    listing = sources.build(cfg.input)
    if not listing.keys:
        raise JobError(f"input.dir {redact(str(cfg.input.dir))} holds no file with an image "
                       f"extension ({', '.join(cfg.input.extensions)}); check the folder or "
                       f"input.extensions"
                       + (" or input.expand_tars" if not cfg.input.expand_tars else ""))
    located = weights.locate(cfg.model)  # hashed for the fingerprint; converted only if needed
    store = open_store(cfg.output)
    store.open(fingerprint(cfg, located), cfg.to_dict(), cfg.output.overwrite)
    try:
        return _run_opened(cfg, listing, located, store, progress, start)
    finally:
        store.close()   # a store's lease is let go on the way out, also on failure


def _run_opened(cfg: Config, listing, located: weights.Located, store, progress,
                start: float) -> Summary:
    """run(), once the output is open."""
    from estimator_vgg.progress import LogProgress

    sources.check_appended(listing, store.loc)
    first, repeats = sources.committed_counts(Output(store.loc, store.manifest))
    todo_at = sources.todo(listing, first, repeats)
    counts = store.manifest.count()
    budget = ErrorBudget.of_output(cfg.input.max_error_fraction, f"{store.loc}/{ERRORS}",
                                   counts["features"], counts["errors"], sum(repeats.values()))
    log.info("found %d entries in %s: %d already done, %d to do", len(listing.keys),
             sources.describe(cfg.input, listing), len(listing.keys) - len(todo_at),
             len(todo_at))
    record = RunRecord(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       command=recorded_command(list(sys.argv)),
                       versions=_versions(), devices=tower_devices(cfg.devices))
    if not todo_at:
        record.seconds = round(time.time() - start, 3)
        store.finish(record, complete=True)
        return _summary(listing, store, budget, time.time() - start, noop=True)
    job = _job(cfg, located, store, listing, todo_at, budget, progress or LogProgress(), start)
    job.progress.start(len(todo_at))
    try:
        done = EXECUTORS[cfg.run.executor](job)
    finally:
        job.progress.close()
    budget.check(final=True)
    seconds = time.time() - start
    record.new_files, record.new_features = len(todo_at), done.features
    record.new_errors = reason_counts(done.errors)
    record.seconds, record.first_batch_s = round(seconds, 3), round(done.first_batch_s, 3)
    record.images_per_s = round(done.features / seconds, 3)
    record.details = done.record
    store.finish(record, complete=True)
    return _summary(listing, store, budget, seconds, done=done, new_files=len(todo_at),
                    executor=cfg.run.executor)


def _job(cfg: Config, located: weights.Located, store: Store, listing: sources.Listing,
         todo_at: List[int], budget: ErrorBudget, progress, start: float) -> Job:
    """The Job of the entries at `todo_at`: cut into parts from the output's next index."""
    hint = precision_hint(cfg.devices, cfg.model.precision)
    if hint and cfg.run.executor == "local":  # Ray's nodes may have other CPUs than this one
        log.info("%s", hint)
    todo = [listing.keys[n] for n in todo_at]
    where = [listing.where[n] for n in todo_at]
    preset = {k: listing.preset[n] for k, n in enumerate(todo_at) if n in listing.preset}
    return Job(cfg, located, store,
               cut_parts(todo, store.next_index(), cfg.output.rows_per_part, where, preset),
               blocked_files(cfg.input, todo, where), progress, budget, start)


def _summary(listing, store: Store, budget: ErrorBudget, seconds: float, noop: bool = False,
             done=None, new_files: int = 0, executor: str = "local") -> Summary:
    errors = dict(sorted(Counter(Output(store.loc, store.manifest).error_reasons()).items()))
    summary = Summary(len(listing.keys), store.manifest.count()["features"], errors, new_files,
                      seconds, store.dir, noop=noop, executor=executor,
                      exit_code=budget.exit_code(sum(errors.values())))
    if done is not None:
        summary.first_batch_s, summary.new_features = done.first_batch_s, done.features
    return summary
