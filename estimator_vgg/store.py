"""The output folder as a crash-safe store: parts committed one at a time, a manifest of what
is done, resume after a kill, and refusal to mix features made with different settings.

Commit order of part k: features part (temporary name, fsync, rename), errors part (same),
then manifest.json (same) listing part k. A part is done once the manifest lists it; files of
an unlisted part are leftovers of a killed run and are deleted when the job starts again, so a
killed-and-rerun job repeats nothing and loses nothing.

Crash points for tests (faults.py) sit between these steps.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg import writer
from estimator_vgg.faults import fault
from estimator_vgg.manifest import (LIST_COPY, MANIFEST, Fingerprint, Manifest,  # noqa: F401
                                    ManifestError, OutputError, PartRecord, RunRecord, part_name,
                                    read_manifest)
from estimator_vgg.storage import Folder

log = logging.getLogger(__name__)

STAGING = ".staging"        # Ray shards' parts before the driver lists them (hidden from readers)
INDEX = "index"             # `estimator-vgg index` writes there (index.py); --overwrite deletes it
STAGING_MARK = "run-id"


def check_resumable(old: Manifest, fingerprint: Fingerprint, where) -> None:
    """Refuse to resume an output made with other settings, saying what differs and how to
    resume it, or start afresh."""
    if old.fingerprint == fingerprint:
        return
    diff = old.fingerprint.differences(fingerprint)
    resume = old.fingerprint.resume_overrides(fingerprint)
    again = f"To resume it, run with {' '.join(resume)}; or use" if resume else "Use"
    raise OutputError(
        f"output.dir {where} holds features made with other settings, and mixing them would "
        f"make the table meaningless: {'; '.join(diff)}. {again} another output.dir, or set "
        f"output.overwrite=true (--overwrite) to delete them and start afresh")


class Store:
    """`<output.dir>` with features/, errors/ and manifest.json."""

    def __init__(self, out_dir: Path, fmt: str):
        self.dir = Path(out_dir)
        self.loc = Folder(self.dir)
        self.fmt = fmt
        self.manifest: Optional[Manifest] = None

    @property
    def parts(self) -> List[PartRecord]:
        return self.manifest.parts

    def open(self, fingerprint: Fingerprint, config: dict, overwrite: bool) -> None:
        """Start or resume; refuse an output made with other settings unless overwriting.

        Holds an exclusive lock on `<output.dir>/.lock` until the process ends, so two runs
        can never write the same output at once.
        """
        self._lock = lock_output(self.dir)
        path = self.dir / MANIFEST
        if overwrite:
            self._clear()
        elif path.is_file():
            try:
                old = read_manifest(self.dir)
            except ManifestError as e:
                raise OutputError(f"{e}; set output.overwrite=true to start afresh") from None
            check_resumable(old, fingerprint, self.dir)
            self.manifest = old
        elif any((self.dir / d).exists() for d in (writer.FEATURES, writer.ERRORS)):
            raise OutputError(f"output.dir {self.dir} has features/ or errors/ but no "
                              f"{MANIFEST}, so it was not written by this job; use another "
                              f"output.dir or set output.overwrite=true to replace them")
        if self.manifest is None:
            self.manifest = Manifest(fingerprint=fingerprint)
        if not self.manifest.output_id:
            self.manifest.output_id = new_output_id()
        self.manifest.config = config
        self._remove_uncommitted()
        self._write_manifest()

    def _clear(self) -> None:
        (self.dir / MANIFEST).unlink(missing_ok=True)  # first: its parts are gone from now on
        (self.dir / LIST_COPY).unlink(missing_ok=True)  # the input list it was made from
        for d in (writer.FEATURES, writer.ERRORS, INDEX):  # the index of the old rows too
            if (self.dir / d).exists():
                log.info("output.overwrite: deleting %s", self.dir / d)
                shutil.rmtree(self.dir / d)

    def _remove_uncommitted(self) -> None:
        """Delete temporary files and parts the manifest does not list (a killed run's), and
        what Ray shards of earlier runs staged (see stage_dir)."""
        if (self.dir / STAGING).exists():
            log.info("removing %s, left by a run that was stopped", self.dir / STAGING)
            shutil.rmtree(self.dir / STAGING, ignore_errors=True)
        for f in self.dir.glob(f"{MANIFEST}.*.tmp"):
            f.unlink()
        committed = {p.name for p in self.parts}
        for sub in (writer.FEATURES, writer.ERRORS):
            d = self.dir / sub
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.name.endswith(".tmp") or f.name.split(".")[0] not in committed:
                    log.info("removing %s, left by a run that was stopped", f)
                    f.unlink()

    def next_index(self) -> int:
        return self.manifest.next_index()

    def commit(self, index: int, paths: Sequence[str], fc7: Optional[np.ndarray],
               errors: Sequence[Tuple[str, str, str]]) -> None:
        """Write part `index` (features and errors) and then list it in the manifest."""
        writer.write_part(self.loc, self.fmt, index, paths, fc7, errors)
        self.record(index, len(paths), len(errors))

    def close(self) -> None:
        """Nothing to let go of here: the lock goes with the process (bucket_store's does
        more)."""

    def record(self, index: int, features: int, errors: int, objects=None) -> None:
        """List part `index`, whose files are on disk, in the manifest: it is done from now on.

        Parts are listed in index order (the readers' row order) whatever order they were
        written in.
        """
        if any(p.index == index for p in self.parts):
            raise OutputError(f"part {part_name(index)} is already listed in "
                              f"{self.dir / MANIFEST}; it must never be written twice")
        self.parts.append(PartRecord(index, features, errors))
        self.parts.sort(key=lambda p: p.index)
        self._write_manifest()
        fault("manifest")

    def stage_dir(self, run_id: str) -> Path:
        """A folder for this run's Ray shards to write parts into, marked with `run_id`.

        Shards never write into features/ or errors/: the driver moves a staged part into
        place just before listing it (adopt_staged). A shard of an earlier, killed run that is
        still dying writes into its own run's folder, which nothing ever moves, so it cannot
        replace a part of this run. The marker file lets a shard check that it sees this very
        folder (output.dir shared by every node), not a same-named local one.
        """
        d = self.dir / STAGING / run_id
        for sub in (writer.FEATURES, writer.ERRORS):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / STAGING_MARK).write_text(run_id)
        return d

    def adopt_staged(self, stage: Path, index: int) -> None:
        """Move part `index`'s files from `stage` into features/ and errors/ (atomic renames,
        same filesystem); the part is done once record() lists it."""
        name = part_name(index)
        moved = 0
        for sub in (writer.FEATURES, writer.ERRORS):
            (self.dir / sub).mkdir(exist_ok=True)
            for f in sorted((stage / sub).glob(f"{name}.*")):
                if not f.name.endswith(".tmp"):
                    os.replace(f, self.dir / sub / f.name)
                    moved += 1
        if not moved:
            raise OutputError(f"part {name} was reported written by a Ray shard but is not in "
                              f"{stage}: is output.dir on storage every node shares?")

    def finish(self, run: RunRecord, complete: bool) -> None:
        self.manifest.runs.append(run)
        self.manifest.status = "complete" if complete else "incomplete"
        self.manifest.totals = self.manifest.count()
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = self.manifest.to_json()
        writer.commit_file(self.dir / MANIFEST, lambda f: f.write(text))


def new_output_id() -> str:
    return os.urandom(16).hex()


def lock_output(out_dir: Path):
    """Take `<output.dir>/.lock` (exclusive, not waiting) and return its open file: held until
    the file is closed or the process ends. The job holds it while it writes parts, and
    `estimator-vgg index` while it writes the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = open(out_dir / ".lock", "a")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise OutputError(f"another run is writing to output.dir {out_dir} (a job or "
                          f"`estimator-vgg index`; it holds {out_dir / '.lock'}); wait for it to "
                          f"finish, or use another output.dir") from None
    return lock


def ensure_output_id(out_dir: Path) -> Manifest:
    """The output's manifest, given an output_id first if it was made before they existed.
    The caller holds the lock (lock_output)."""
    manifest = read_manifest(out_dir)
    if manifest is not None and not manifest.output_id:
        manifest.output_id = new_output_id()
        text = manifest.to_json()
        writer.commit_file(Path(out_dir) / MANIFEST, lambda f: f.write(text))
    return manifest
