"""The output folder as a crash-safe store: parts committed one at a time, a manifest of what
is done, resume after a kill, and refusal to mix features made with different settings.

Commit order of part k: features part (temporary name, fsync, rename), errors part (same),
then manifest.json (same) listing part k. A part is done once the manifest lists it; files of
an unlisted part are leftovers of a killed run and are deleted when the job starts again, so a
killed-and-rerun job repeats nothing and loses nothing.

ESTIMATOR_VGG_FAULT=<point>:<n> kills the process with SIGKILL the n-th time it reaches
<point> (batch, features_tmp, part_files, manifest). Tests use it to crash a real run at
chosen moments; it does nothing unless set.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from estimator_vgg import writer
from estimator_vgg.listing import display_path
from estimator_vgg.writer import MANIFEST

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_fault_counts: Dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook: SIGKILL this process at the configured point (see the module doc)."""
    spec = os.environ.get("ESTIMATOR_VGG_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == point:
        _fault_counts[point] = _fault_counts.get(point, 0) + 1
        if _fault_counts[point] == int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class OutputError(RuntimeError):
    """The output folder cannot be used as it is; the message says why and what to do."""


def _describe_differences(old: dict, new: dict, prefix: str = "") -> List[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the output, {b!r} now")
    return out


class Store:
    """`<output.dir>` with features/, errors/ and manifest.json."""

    def __init__(self, out_dir: Path, fmt: str):
        self.dir = Path(out_dir)
        self.fmt = fmt
        self.manifest: dict = {}

    @property
    def parts(self) -> List[dict]:
        return self.manifest["parts"]

    def open(self, fingerprint: dict, config: dict, overwrite: bool) -> None:
        """Start or resume; refuse an output made with other settings unless overwriting.

        Holds an exclusive lock on `<output.dir>/.lock` until the process ends, so two runs
        can never write the same output at once.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".lock", "a")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"another run is writing to output.dir {self.dir} (it holds "
                              f"{self.dir / '.lock'}); wait for it to finish, or use another "
                              f"output.dir") from None
        path = self.dir / MANIFEST
        if overwrite:
            self._clear()
        elif path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise OutputError(f"{path} is unreadable ({e}); set output.overwrite=true to "
                                  f"start afresh") from None
            if old.get("fingerprint") != fingerprint:
                diff = _describe_differences(old.get("fingerprint", {}), fingerprint)
                raise OutputError(
                    f"output.dir {self.dir} holds features made with other settings, and "
                    f"mixing them would make the table meaningless: {'; '.join(diff)}. Use "
                    f"another output.dir, or set output.overwrite=true (--overwrite) to delete "
                    f"them and start afresh")
            self.manifest = old
        elif any((self.dir / d).exists() for d in (writer.FEATURES, writer.ERRORS)):
            raise OutputError(f"output.dir {self.dir} has features/ or errors/ but no "
                              f"{MANIFEST}, so it was not written by this job; use another "
                              f"output.dir or set output.overwrite=true to replace them")
        if not self.manifest:
            self.manifest = {"manifest_version": MANIFEST_VERSION, "fingerprint": fingerprint,
                             "status": "running", "parts": [], "runs": []}
        self.manifest["config"] = config
        self._remove_uncommitted()
        self._write_manifest()

    def _clear(self) -> None:
        (self.dir / MANIFEST).unlink(missing_ok=True)  # first: its parts are gone from now on
        for d in (writer.FEATURES, writer.ERRORS):
            if (self.dir / d).exists():
                log.info("output.overwrite: deleting %s", self.dir / d)
                shutil.rmtree(self.dir / d)

    def _remove_uncommitted(self) -> None:
        """Delete temporary files and parts the manifest does not list (a killed run's)."""
        committed = {writer.part_name(p["index"]) for p in self.parts}
        for sub in (writer.FEATURES, writer.ERRORS):
            d = self.dir / sub
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.name.endswith(".tmp") or f.name.split(".")[0] not in committed:
                    log.info("removing %s, left by a run that was stopped", f)
                    f.unlink()

    def done_paths(self) -> Set[str]:
        return writer.committed_paths(self.dir, self.manifest)

    def next_index(self) -> int:
        return max((p["index"] for p in self.parts), default=-1) + 1

    def commit(self, index: int, paths: Sequence[str], fc7: Optional[np.ndarray],
               errors: Sequence[Tuple[str, str, str]]) -> None:
        """Write part `index` (features and errors) and then list it in the manifest.

        Paths are written in their display form (listing.display_path): the tables hold UTF-8.
        """
        matrix = fc7 if fc7 is not None else np.zeros((0, writer.FC7_DIM), np.float32)
        writer.write_features(self.dir, self.fmt, index, [display_path(p) for p in paths],
                              matrix, before_rename=lambda: fault("features_tmp"))
        writer.write_errors(self.dir, index, [(display_path(p), r, m) for p, r, m in errors])
        fault("part_files")
        self.parts.append({"index": index, "features": len(paths), "errors": len(errors)})
        self._write_manifest()
        fault("manifest")

    def finish(self, run: dict, complete: bool) -> None:
        self.manifest["runs"].append(run)
        self.manifest["status"] = "complete" if complete else "incomplete"
        feats = sum(p["features"] for p in self.parts)
        errs = sum(p["errors"] for p in self.parts)
        self.manifest["totals"] = {"files": feats + errs, "features": feats, "errors": errs,
                                   "parts": len(self.parts)}
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=2, ensure_ascii=False).encode("utf-8")
        writer.commit_file(self.dir / MANIFEST, lambda f: f.write(text))
