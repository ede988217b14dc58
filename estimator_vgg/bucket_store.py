"""An output on an object store (output.dir: s3://, gs://), committed exactly once; and
open_store, which opens an output wherever it is.

    store = open_store(cfg.output)         # store.Store for a folder, BucketStore for a bucket
    store.open(fingerprint, config, overwrite)
    store.commit(index, paths, fc7, errors)    # the part's objects, then its commit record
    store.finish(run_record, complete=True)

A store has no rename, so a part is committed by a record that names its objects:
  1. its objects are written whole, under names that carry the run and the attempt
     (`features/part-00003.<run>-<attempt>.parquet`): nothing ever overwrites a committed
     object, not even a shard of a killed run that is still dying;
  2. the numbered record `_commits/<seq>.json` is created with the store's create-only write
     (seq: the parts committed before it), naming the part's objects (key, size, ETag, and the
     version or generation where the store keeps them). The part is done from then on; if two
     drivers ever race, one of them finds its record taken and stops.
manifest.json (the same document as in a folder) holds the fingerprint, the config, the runs
and the parts up to its `commits`; it is rewritten when a run opens and finishes the output,
never per part, so a commit writes one small record however many parts there are. Readers
(output.py) read manifest.json, then the records after it by key. When the output is opened
the store is probed for create-only writes (a store that accepts a second create of one key is
refused), a lease is taken (lease.py), multipart uploads left by a killed run are aborted and
objects of parts never committed are deleted; when a run completes they are deleted again, so
features/ then holds exactly the committed parts (unless a shard of a killed run, still
dying, writes after that; readers of this package never look at such an object, and the next
run removes it). Light at import.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import uuid
from typing import List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg import writer
from estimator_vgg.faults import fault
from estimator_vgg.lease import Lease, LeaseHeld
from estimator_vgg.manifest import (ERRORS, FEATURES, LIST_COPY, MANIFEST, Fingerprint,
                                    Manifest, ManifestError, OutputError, PartRecord, RunRecord,
                                    part_name)
from estimator_vgg.output import (COMMITS, SEGMENT, Output, commit_name, read_output_manifest,
                                  segment_name)
from estimator_vgg.storage import Bucket, Exists, StorageError, is_store
from estimator_vgg.store import INDEX, Store, check_resumable, new_output_id

log = logging.getLogger(__name__)

PROBE = "_probe/"


def open_store(output_cfg):
    """The output of output.dir: a Store for a local folder, a BucketStore for a bucket."""
    if is_store(output_cfg.dir):
        return BucketStore(output_cfg)
    return Store(output_cfg.dir, output_cfg.format)


def probe_create_only(bucket: Bucket) -> float:
    """Check that the store refuses a second create of one name; the store's clock (the
    probe object's last-modified time). OutputError for a store that does not."""
    name = f"{PROBE}{uuid.uuid4().hex}"
    try:
        bucket.create(name, b"1")
    except FileNotFoundError:
        raise OutputError(f"output.dir {bucket}: its bucket does not exist; create it (the "
                          f"job writes objects under the prefix, it makes no bucket)") from None
    except StorageError as e:   # deleted only once created: a refused delete would hide this
        raise OutputError(f"output.dir {bucket} cannot be written: {e}. Check the bucket, "
                          f"the credentials and output.storage_options") from None
    try:
        try:
            bucket.create(name, b"2")
        except Exists:
            info = bucket.info(name)
            return info["mtime"] if info and info.get("mtime") else 0.0
        raise OutputError(
            f"output.dir {bucket} is on a store that does not honour create-only writes (a "
            f"second create of {name} succeeded): exactly-once commits rely on them (S3 "
            f"If-None-Match: *, GCS ifGenerationMatch=0), so the output is refused. Use AWS "
            f"S3, Google Cloud Storage or a store that implements them, or a local folder")
    finally:
        bucket.delete(name)


class BucketStore:
    """`<output.dir>` on an object store: manifest.json, _commits/, features/, errors/."""

    def __init__(self, output_cfg, run_id: Optional[str] = None):
        self.loc = Bucket(str(output_cfg.dir), output_cfg)
        self.dir = self.loc.uri
        self.cfg, self.fmt = output_cfg, output_cfg.format
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.manifest: Optional[Manifest] = None
        self.lease: Optional[Lease] = None
        self._recent = collections.deque(maxlen=SEGMENT)   # this run's latest records

    @property
    def parts(self) -> List[PartRecord]:
        return self.manifest.parts

    def open(self, fingerprint: Fingerprint, config: dict, overwrite: bool) -> None:
        """Start or resume, as Store.open does, on the store: probe, lease, then the manifest."""
        now = probe_create_only(self.loc)
        try:
            self.lease = Lease.take(self.loc, self.run_id, self.cfg.lease_s, now,
                                    self.cfg.break_lease)
        except LeaseHeld as e:
            raise OutputError(str(e)) from None
        try:
            self._open(fingerprint, config, overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, fingerprint: Fingerprint, config: dict, overwrite: bool) -> None:
        if overwrite:
            self._clear()
        else:
            try:
                old = read_output_manifest(self.loc)
            except ManifestError as e:
                raise OutputError(f"{e}; set output.overwrite=true to start afresh") from None
            if old is not None:
                check_resumable(old, fingerprint, self.loc)
                self.manifest = old
            elif self.loc.list(FEATURES) or self.loc.list(ERRORS) or self.loc.list(COMMITS):
                raise OutputError(f"output.dir {self.loc} has features/, errors/ or _commits/ "
                                  f"but no {MANIFEST}, so it was not written by this job (or "
                                  f"its manifest was deleted); use another output.dir or set "
                                  f"output.overwrite=true to replace them")
        if self.manifest is None:
            self.manifest = Manifest(fingerprint=fingerprint, commits=0)
        if not self.manifest.output_id:
            self.manifest.output_id = new_output_id()
        self.manifest.config = config
        self.remove_uncommitted()
        self._write_manifest()

    def _clear(self) -> None:
        """output.overwrite: the manifest first (its parts are gone from then on), then every
        object of the output but the leases."""
        self.loc.delete(MANIFEST)
        for sub in (COMMITS, FEATURES + "/", ERRORS + "/", INDEX + "/"):
            for name in self.loc.list(sub):
                self.loc.delete(name)
        self.loc.delete(LIST_COPY)
        log.info("output.overwrite: deleted the output in %s", self.loc)

    def committed(self) -> set:
        """The names of every committed part's files (the objects its record names, or the
        fixed names of a part a folder committed, for an output copied to the store)."""
        output = Output(self.loc, self.manifest)
        return {name for p in self.parts for name in output.part_files(p.index)}

    def remove_uncommitted(self) -> None:
        """Abort the multipart uploads a killed run left, and delete the objects of parts no
        commit names (readers never look at them; afterwards features/ is the table). Only
        while this run holds the lease (its check comes first)."""
        aborted = self.loc.abort_uploads()
        if aborted:
            log.info("aborted %d multipart uploads left by a run that was stopped", aborted)
        keep = self.committed()
        for sub in (FEATURES + "/", ERRORS + "/"):
            for name in self.loc.list(sub):
                if name not in keep:
                    log.info("removing %s, left by a run that was stopped", self.loc.url(name))
                    self.loc.delete(name)

    def next_index(self) -> int:
        return self.manifest.next_index()

    def token(self) -> str:
        """A fresh name token for one attempt at a part: the run and a random attempt."""
        return f"{self.run_id}-{os.urandom(4).hex()}"

    def commit(self, index: int, paths: Sequence[str], fc7: Optional[np.ndarray],
               errors: Sequence[Tuple[str, str, str]]) -> None:
        """Write part `index`'s objects, then its commit record."""
        try:
            objects = writer.write_part(self.loc, self.fmt, index, paths, fc7, errors,
                                        token=self.token())
        except StorageError as e:
            raise OutputError(f"part {part_name(index)} could not be written: {e}. The parts "
                              f"committed so far are kept; rerun the same command to resume"
                              ) from None
        self.record(index, len(paths), len(errors), objects)

    def record(self, index: int, features: int, errors: int, objects: dict) -> None:
        """Commit part `index`, whose objects are whole on the store: create its record."""
        if any(p.index == index for p in self.parts):
            raise OutputError(f"part {part_name(index)} is already committed in {self.loc}; "
                              f"it must never be committed twice")
        try:
            self.lease.check()
        except LeaseHeld as e:
            raise OutputError(str(e)) from None
        part = PartRecord(index, features, errors, objects)
        seq = self.manifest.commits
        body = json.dumps({"seq": seq, "run": self.run_id, "part": part.to_dict()}).encode()
        try:
            self.loc.create(commit_name(seq), body)
        except Exists:
            raise OutputError(f"another run committed to {self.loc} while this one ran (commit "
                              f"record {commit_name(seq)} exists): this run stops before "
                              f"committing {part_name(index)}; what is committed is whole. "
                              f"Rerun when the other run is done") from None
        except StorageError as e:
            raise OutputError(f"part {part_name(index)} could not be committed: {e}. The parts "
                              f"committed so far are kept; rerun the same command to resume"
                              ) from None
        self.manifest.commits = seq + 1
        self.parts.append(part)
        self.parts.sort(key=lambda p: p.index)
        self._recent.append(json.loads(body))
        if (seq + 1) % SEGMENT == 0:
            self._write_segment(seq // SEGMENT)
        fault("manifest")

    def _write_segment(self, block: int) -> None:
        """A complete block of records in one object, for readers (created once; its records
        stay the truth, so a segment that cannot be written costs readers time, not rows)."""
        records = list(self._recent)
        if len(records) != SEGMENT or records[0]["seq"] != block * SEGMENT:
            return   # this run did not make the whole block: readers read its records
        try:
            self.loc.create(segment_name(block), json.dumps(records).encode())
        except (Exists, StorageError) as e:
            log.warning("could not write %s (readers will read its records one by one): %s",
                        self.loc.url(segment_name(block)), e)

    def finish(self, run: RunRecord, complete: bool) -> None:
        try:
            self.lease.check()   # a run whose lease lapsed touches nothing any more
        except LeaseHeld as e:
            raise OutputError(str(e)) from None
        self.manifest.runs.append(run)
        self.manifest.status = "complete" if complete else "incomplete"
        self.manifest.totals = self.manifest.count()
        self._write_manifest()
        if complete:   # what shards wrote and no commit named (a retried shard's first try)
            self.remove_uncommitted()
        self.close()

    def close(self) -> None:
        """Let go of the output: release the lease (the next run goes on at once)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _write_manifest(self) -> None:
        fault("manifest_json")
        self.loc.write(MANIFEST, self.manifest.to_json())
