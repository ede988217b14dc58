"""Building `estimator-vgg index`: an approximate nearest-neighbour index (faiss) over an
output's committed parts, or the parts committed since it was built added to it.

    estimator-vgg index out/big --pca 256            # build, or add the parts added since
    build_index("out/big", pca=256)                  # the same from Python

The build streams the parts: it trains on a sample of rows taken from parts spread over the
output and then adds part by part, so peak memory is the sample, one part and the index (the
memory budget, --memory-mb, bounds the sample and decides what kind fits). What the index
holds and its files: index_files.py; searching it: index_search.py (load_index). Light at
import (faiss is imported when a build starts).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np

from estimator_vgg.index_files import (CODES, DUPLICATES, FILES, OFFSETS, PATHS, RECORD, TRANSFORM,
                                       VECTORS, Codes, Pca, Record, check_belongs, import_faiss,
                                       load_paths, local_dir, publish)
from estimator_vgg.index_search import load_index  # noqa: F401  (estimator_vgg.index.load_index)
from estimator_vgg.output import Output
from estimator_vgg.parquet_layout import row_offsets
from estimator_vgg.recipe import FC7_DIM
from estimator_vgg.searcher import SearchError, open_output, unit
from estimator_vgg.writer import commit_file

KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
DEFAULT_MEMORY_MB = 4096
FLAT_MAX_ROWS = 50_000      # auto: exact (flat) search up to here; above, an inverted file
DEFAULT_NPROBE = 16
HNSW_M = 32


def choose_kind(rows: int, dims: int, memory_mb: int) -> Tuple[str, str]:
    """auto: (kind, reason) from the row count and the memory budget."""
    flat_mb = rows * dims * 4 / 2**20
    budget = memory_mb / 2   # the other half: the training sample, a part, faiss' own buffers
    if rows <= FLAT_MAX_ROWS and flat_mb <= budget:
        return "flat", (f"{rows} rows <= {FLAT_MAX_ROWS}: exact search over the codes "
                        f"({flat_mb:.0f} MB) is fast enough")
    if flat_mb <= budget:
        return "ivf", (f"{rows} rows > {FLAT_MAX_ROWS}: an inverted file scans a few lists per "
                       f"query; its {dims}-d float codes ({flat_mb:.0f} MB) fit in half of "
                       f"--memory-mb {memory_mb}")
    return "ivfpq", (f"{rows} rows of {dims}-d float codes would take {flat_mb:.0f} MB, over "
                     f"half of --memory-mb {memory_mb}: product-quantised codes"
                     + ("" if dims < FC7_DIM else " (--pca 256 would keep float codes)"))


def _pq_m(rows: int, dims: int, memory_mb: int) -> int:
    """ivfpq: the most bytes per row (a divisor of dims, at most dims/2, at most 64... of
    faiss' fast sizes) whose codes fit in half the budget."""
    budget = memory_mb / 2 * 2**20
    for m in (128, 96, 64, 48, 32, 24, 16, 12, 8, 4):
        if m <= dims // 2 and dims % m == 0 and rows * (m + 8) <= budget:
            return m
    raise SearchError(f"{rows} rows do not fit in --memory-mb {memory_mb} even at 4 bytes a "
                      f"row: raise --memory-mb")


def _nlist(rows: int, sample: int) -> int:
    return int(max(1, min(4 * math.sqrt(rows), sample // 39, 65536)))


def _sample(output: Output, rows: int, seed: int = 0) -> np.ndarray:
    """About `rows` fc7 rows from parts spread evenly over the output (not all parts are read)."""
    parts = [p for p in output.parts if p.features]
    total = sum(p.features for p in parts)
    rows = min(rows, total)
    rng = np.random.default_rng(seed)
    # enough evenly spaced parts to hold twice the sample, then a random subset of their rows
    want = min(total, 2 * rows)
    step = max(1, int(total / max(want, 1)))
    chosen, have = [], 0
    for p in parts[::step]:
        chosen.append(p)
        have += p.features
    if have < rows:
        chosen, have = parts, total
    take = rows / have
    out = np.empty((rows, FC7_DIM), np.float32)
    n = 0
    for p in chosen:
        _, fc7 = output.read_part(p.index)
        k = min(rows - n, int(round(len(fc7) * take)) + 1)
        if k <= 0:
            break
        pick = np.sort(rng.choice(len(fc7), size=min(k, len(fc7)), replace=False))
        out[n:n + len(pick)] = fc7[pick]
        n += len(pick)
    return out[:n]


def _new_index(faiss, kind: str, dims: int, rows: int, sample_rows: int, memory_mb: int):
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dims), ""
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dims, HNSW_M, ip)
        idx.hnsw.efConstruction = 80
        return idx, f"M={HNSW_M}"
    nlist = _nlist(rows, sample_rows)
    quantizer = faiss.IndexFlatIP(dims)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, dims, nlist, ip), f"nlist={nlist}"
    if kind == "ivfpq":
        m = _pq_m(rows, dims, memory_mb)
        return faiss.IndexIVFPQ(quantizer, dims, nlist, m, 8, ip), f"nlist={nlist}, m={m}"
    raise SearchError(f"unknown index kind {kind!r}: one of {', '.join(KINDS)}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class BuildReport:
    record: Record
    added_parts: int
    added_rows: int
    seconds: float
    fresh: bool
    lines: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    """What the command asked for (None: the default, or what the index already is)."""
    kind: Optional[str] = None
    pca: Optional[int] = None
    whiten: bool = False
    memory_mb: int = DEFAULT_MEMORY_MB
    nprobe: Optional[int] = None
    train_rows: Optional[int] = None

    def check(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise SearchError(f"unknown --kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.pca is not None and not 1 <= self.pca < FC7_DIM:
            raise SearchError(f"--pca {self.pca}: give a number of dimensions from 1 to "
                              f"{FC7_DIM - 1}")

    def differs(self, record: Record) -> bool:
        """Whether the index `record` describes is not what was asked for."""
        return ((self.pca is not None and self.pca != record.pca)
                or self.kind not in (None, "auto", record.kind)
                or (self.whiten and not record.whiten))


def build_index(out_dir, kind: Optional[str] = None, pca: Optional[int] = None,
                whiten: bool = False, memory_mb: int = DEFAULT_MEMORY_MB,
                nprobe: Optional[int] = None, train_rows: Optional[int] = None,
                rebuild: bool = False, say: Callable[[str], None] = print,
                storage_options: Optional[dict] = None) -> BuildReport:
    """Build `<out_dir>/index/`, or add to it the parts committed since it was built. An
    output on an object store (read with storage_options) gets its index built on this
    machine and written to the store's index/."""
    faiss = import_faiss()
    output = open_output(out_dir, storage_options)
    settings = Settings(kind, pca, whiten, memory_mb, nprobe, train_rows)
    settings.check()
    t0 = time.time()
    with _held(output):
        output = _with_output_id(output)
        if not any(p.features for p in output.parts):
            raise SearchError(f"{output.dir} has no feature rows yet (its manifest lists "
                              f"{len(output.parts)} parts, none with features): run the "
                              f"job first")
        builder = IndexBuilder(faiss, output, say, t0)
        record = None if rebuild else builder.existing()
        if record is not None and settings.differs(record):
            say(f"rebuilding the index: it is {record.describe()} (pca {record.pca}), "
                f"other settings were asked for")
            record = None
        return builder.fresh(settings) if record is None else builder.update(record, nprobe)


@contextlib.contextmanager
def _held(output):
    """The output, held while its index is written: the folder's lock, or the store's lease
    (as a job holds them)."""
    if not output.loc.remote:
        from estimator_vgg.store import lock_output
        lock = lock_output(output.dir)
        try:
            yield
        finally:
            lock.close()
        return
    import uuid

    from estimator_vgg.bucket_store import probe_create_only
    from estimator_vgg.lease import Lease, LeaseHeld
    from estimator_vgg.manifest import OutputError
    try:
        lease = Lease.take(output.loc, f"index-{uuid.uuid4().hex[:8]}", 60.0,
                           probe_create_only(output.loc))
    except LeaseHeld as e:
        raise OutputError(str(e)) from None
    try:
        yield
    finally:
        lease.release()


def _with_output_id(output: Output) -> Output:
    """The output as it is now (read again under the lock), given an output_id first if it
    was made before they existed (a folder written by an earlier release)."""
    if not output.loc.remote:
        from estimator_vgg.store import ensure_output_id
        return Output(output.loc, ensure_output_id(output.dir))
    return Output(output.loc)   # a store output has an output_id from its first run


class IndexBuilder:
    """One build of an output's index: what its steps share (the output, faiss' index, the
    codes, the rows' paths, the record that will describe it)."""

    def __init__(self, faiss, output: Output, say: Callable[[str], None], t0: float):
        self.faiss, self.output, self.say, self.t0 = faiss, output, say, t0
        self.dir = local_dir(output)   # built here; on a store, published when written
        self.idx = None
        self.codes_of = Codes()
        self.paths: List[str] = []

    def existing(self) -> Optional[Record]:
        """The record of the index there, if it is this output's (else None, said why)."""
        for f in self.dir.glob("*.tmp") if self.dir.is_dir() else ():   # a killed build's
            f.unlink()
        record = Record.read(self.dir)
        if record is not None:
            try:
                check_belongs(record, self.output.manifest, self.output.dir)
            except SearchError as e:
                self.say(f"rebuilding the index: {e}")
                return None
        return record

    def fresh(self, s: Settings) -> BuildReport:
        """A new index: its kind, the training sample, the PCA, training; then every part."""
        rows = sum(p.features for p in self.output.parts)
        dims = s.pca or FC7_DIM
        kind, reason = (choose_kind(rows, dims, s.memory_mb) if (s.kind or "auto") == "auto"
                        else (s.kind, f"--kind {s.kind}"))
        if (s.kind or "auto") == "auto":
            self.say(f"kind auto: {kind}: {reason}")
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            (self.dir / f).unlink(missing_ok=True)
        sample = self._sample(rows, s) if s.pca is not None or kind in ("ivf", "ivfpq") else None
        transform = None
        if s.pca is not None:
            ts = time.time()
            transform = Pca.learn(sample, s.pca, s.whiten)
            self.say(f"PCA {FC7_DIM} -> {s.pca}{' (whitened)' if s.whiten else ''} learnt on "
                     f"{len(sample)} rows ({time.time() - ts:.1f} s)")
            transform.save(self.dir / TRANSFORM)
        self.codes_of = Codes(transform)
        self.idx, detail = _new_index(self.faiss, kind, dims, rows,
                                      len(sample) if sample is not None else 0, s.memory_mb)
        if not self.idx.is_trained:
            ts = time.time()
            # the sample is unit already: no second copy of it
            train = unit(transform.apply(sample)) if transform is not None else sample
            self.idx.train(np.ascontiguousarray(train))
            self.say(f"{kind} ({detail}) trained on {len(train)} rows ({time.time() - ts:.1f} s)")
        del sample
        m = self.output.manifest
        record = Record(output_id=m.output_id, fingerprint=m.fingerprint.to_dict(), parts=[],
                        kind=kind, pca=s.pca, whiten=s.whiten, dims=dims,
                        nprobe=s.nprobe or DEFAULT_NPROBE,
                        reason=reason + (f"; {detail}" if detail else ""),
                        faiss_version=self.faiss.__version__, built=_now(), updated=_now())
        return self._add_parts(record, fresh=True)

    def _sample(self, rows: int, s: Settings) -> np.ndarray:
        """The training sample, unit rows: at most a quarter of the budget of full fc7 rows."""
        cap = int(s.memory_mb * 2**20 / 4 / (FC7_DIM * 4))
        sample_rows = min(rows, s.train_rows or min(50_000, cap))
        if cap < 256 and sample_rows > cap:
            raise SearchError(f"--memory-mb {s.memory_mb} is too small for a training sample: "
                              f"give at least 256")
        ts = time.time()
        sample = _sample(self.output, sample_rows)
        sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)  # in place
        self.say(f"sample: {len(sample)} rows from the parts ({time.time() - ts:.1f} s)")
        return sample

    def update(self, record: Record, nprobe: Optional[int]) -> BuildReport:
        """The index there, with the parts committed since it was built added."""
        self.idx = self.faiss.read_index(str(self.dir / VECTORS))
        self.codes_of = Codes(Pca.load(self.dir / TRANSFORM) if record.pca else None)
        if nprobe:
            record.nprobe = nprobe
        self.paths = load_paths(self.dir)
        if len(self.paths) != record.rows or self.idx.ntotal != record.rows:
            raise SearchError(f"{self.dir} is inconsistent ({self.idx.ntotal} vectors, "
                              f"{len(self.paths)} paths, {record.rows} rows in {RECORD}): run "
                              f"`estimator-vgg index {self.output.dir} --rebuild`")
        return self._add_parts(record, fresh=False)

    def _add_parts(self, record: Record, fresh: bool) -> BuildReport:
        """Every part the record does not cover, into the index, codes, offsets and paths;
        then the files, the record last."""
        covered = {i for i, _ in record.parts}
        new = [p for p in self.output.parts if p.index not in covered and p.features]
        added, ta = 0, time.time()
        with self._appending(record) as (codes_file, offsets_file):
            for p in new:
                paths, fc7 = self.output.read_part(p.index)
                codes = self.codes_of(fc7)
                self.idx.add(codes)
                if codes_file is not None:
                    codes_file.write(codes.astype(np.float32).tobytes())
                offsets_file.write(self._row_offsets(p.index, len(paths)).tobytes())
                self.paths.extend(paths)
                record.parts.append((p.index, len(paths)))
                added += len(paths)
        if new:
            self.say(f"added {len(new)} parts, {added} rows ({time.time() - ta:.1f} s)")
        record.parts.sort()
        if new or fresh:
            self._write(record)
        else:
            self.say(f"the index is up to date: {record.describe()}")
        return BuildReport(record, len(new), added, time.time() - self.t0, fresh)

    @contextlib.contextmanager
    def _appending(self, record: Record):
        """codes.f32 (with a PCA) and offsets.i64 open for appending, cut to the record's rows
        first (rows past it are a killed build's); flushed to disk at the end."""
        if record.pca:
            with open(self.dir / CODES, "ab") as f:
                f.truncate(record.rows * record.dims * 4)
        with open(self.dir / OFFSETS, "ab") as f:
            f.truncate(record.rows * 8)
        with (open(self.dir / CODES, "ab") if record.pca else contextlib.nullcontext()) as cf, \
                open(self.dir / OFFSETS, "ab") as of:
            yield cf, of
            for f in (cf, of):
                if f is not None:
                    f.flush()
                    os.fsync(f.fileno())

    def _row_offsets(self, index: int, rows: int) -> np.ndarray:
        if self.output.fmt != "parquet":
            return np.full(rows, -1, np.int64)
        with self.output.open_features(index) as f:
            return row_offsets(f, rows)

    def _write(self, record: Record) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.dir / f"{VECTORS}.{os.getpid()}.tmp"   # faiss writes it; no copy in memory
        self.faiss.write_index(self.idx, str(tmp))
        os.replace(tmp, self.dir / VECTORS)
        table = pa.table({"path": pa.array(self.paths, pa.string())})
        commit_file(self.dir / PATHS, lambda f: pq.write_table(table, f))
        (self.dir / DUPLICATES).unlink(missing_ok=True)   # its pairs are of fewer rows
        record.updated = _now()
        record.files = {f: (self.dir / f).stat().st_size for f in FILES
                        if f != RECORD and (self.dir / f).is_file()}
        text = record.to_json()
        commit_file(self.dir / RECORD, lambda f: f.write(text))
        publish(self.output, self.dir, FILES)
