"""An approximate nearest-neighbour index (faiss) over an output's committed parts.

    estimator-vgg index out/big --pca 256            # build, or add the parts added since
    idx = load_index("out/big")                      # once, in a notebook
    idx.search(vectors, k=10)     idx.search_paths(["a/b.jpg"])     idx.search_files([file])
    idx.duplicates(0.98)                             # every pair at or above the threshold

What is indexed: each fc7 row scaled to unit length (so inner product is cosine similarity),
then, with --pca DIMS, projected on the first DIMS principal components (learnt on a sample;
--whiten divides each by its standard deviation) and scaled to unit length again. With PCA the
index holds these codes and scores are cosines of the codes, not of the full fc7; without it
the codes are the unit fc7 rows themselves and scores are cosines of fc7 (exact for the flat,
ivf and hnsw kinds; ivfpq scores are from its compressed codes).

The build streams the parts: it trains on a sample of rows taken from parts spread over the
output and then adds part by part, so peak memory is the sample, one part and the index
(the memory budget, --memory-mb, bounds the sample and decides what kind fits).

<output.dir>/index/
  index.json          what the index covers: parts and rows, the output's fingerprint and
                      output_id, the kind, PCA, nprobe (written last: the index is what it says)
  vectors.faiss       the faiss index over the codes (ids: row numbers, in the covered parts'
                      order)
  pca.npz             the PCA (with --pca): mean, components, their scale
  codes.f32           the codes as float32 [rows, DIMS] (with --pca): queries by path,
                      re-scoring of ivfpq candidates, the duplicate search's queries
  offsets.i64         int64 per row: where its 4096 floats start in its part's file (-1 when
                      the part is not in writer's fast layout), to re-score candidates on the
                      full fc7 by reading just those rows
  paths.parquet       the path of each row
  duplicates.parquet  pairs written by `neighbors --duplicates` (path_a, path_b, score)
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg import writer
from estimator_vgg.manifest import Manifest
from estimator_vgg.neighbors import Match, SearchError, _unit, groups_of, manifest_of
from estimator_vgg.recipe import FC7_DIM

log = logging.getLogger(__name__)

INDEX_DIR = "index"
RECORD = "index.json"
VECTORS = "vectors.faiss"
TRANSFORM = "pca.npz"
CODES = "codes.f32"
OFFSETS = "offsets.i64"
PATHS = "paths.parquet"
DUPLICATES = "duplicates.parquet"
RECORD_VERSION = 1
KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
DEFAULT_MEMORY_MB = 4096
FLAT_MAX_ROWS = 50_000      # auto: exact (flat) search up to here; above, an inverted file
DEFAULT_NPROBE = 16
HNSW_M = 32
CANDIDATES = 10             # re-scoring: k * CANDIDATES candidates from the codes (at least 100)
DUP_MARGIN = 0.02           # re-scoring duplicates: candidates at threshold - margin on codes
ROW_BYTES = FC7_DIM * 4

INSTALL_HINT = ("faiss is not installed: the index needs the search extra. Install it with "
                "`ESTIMATOR_VGG_SEARCH=1 ./run.sh neighbors --help` (run.sh's venv) or `pip "
                "install -c constraints-py311.txt -e '.[search]'`")


def import_faiss():
    # faiss' loader logs at INFO which of its builds it tried (AVX512, AVX2, generic)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError:
        raise SearchError(INSTALL_HINT) from None
    return faiss


def index_dir(out_dir: Path) -> Path:
    return Path(out_dir) / INDEX_DIR


@dataclass
class Record:
    """index.json."""
    output_id: str
    fingerprint: dict
    parts: List[Tuple[int, int]]   # (part index, feature rows) covered, in row order
    kind: str
    pca: Optional[int]
    whiten: bool
    dims: int
    nprobe: int
    reason: str
    faiss_version: str
    built: str
    updated: str
    version: int = RECORD_VERSION

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def keeps_fc7(self) -> bool:
        """Scores are cosines of the full fc7 (not of reduced or compressed codes)."""
        return self.pca is None and self.kind != "ivfpq"

    def scores_are(self, rescored: bool = False) -> str:
        if self.keeps_fc7:
            return "cosine similarity of fc7"
        if rescored:
            codes = f"{self.pca}-d PCA codes" if self.pca else "ivfpq codes"
            return (f"cosine similarity of fc7 (candidates from the {codes}, re-scored on the "
                    f"full fc7 read from the parts)")
        if self.pca is not None:
            return (f"cosine similarity of {self.pca}-d PCA codes{' (whitened)' if self.whiten else ''}, "
                    f"not of the full fc7")
        return "cosine similarity estimated from ivfpq's compressed codes, not exact fc7"

    def describe(self) -> str:
        codes = f"{self.dims}-d PCA codes" if self.pca else "4096-d fc7"
        return f"{self.kind} index over {codes} of {self.rows} rows"

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        d["parts"] = [{"index": i, "features": n} for i, n in self.parts]
        return json.dumps(d, indent=2).encode()

    @classmethod
    def read(cls, d: Path) -> Optional["Record"]:
        f = d / RECORD
        if not f.is_file():
            return None
        try:
            raw = json.loads(f.read_text())
            raw["parts"] = [(int(p["index"]), int(p["features"])) for p in raw["parts"]]
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as e:
            raise SearchError(f"{f} is unreadable ({type(e).__name__}: {e}); delete "
                              f"{d} and run `estimator-vgg index` again") from None


def _check_belongs(record: Record, manifest: Manifest, out_dir: Path) -> List[int]:
    """Refuse an index that is not of this output as it is now; the part indexes it lacks."""
    d = index_dir(out_dir)
    if record.output_id != manifest.output_id:
        raise SearchError(f"{d} was built from another output (output_id "
                          f"{record.output_id[:8]}, the output's is "
                          f"{(manifest.output_id or 'none')[:8]}): the output was rebuilt or "
                          f"the folder copied over. Run `estimator-vgg index {out_dir} "
                          f"--rebuild`")
    from estimator_vgg.manifest import Fingerprint
    diff = Fingerprint.from_dict(record.fingerprint).differences(manifest.fingerprint)
    if diff:
        raise SearchError(f"{d} was built from features made with other weights or "
                          f"preprocessing ({'; '.join(diff)}): its scores would not be "
                          f"comparable. Run `estimator-vgg index {out_dir} --rebuild`")
    have = {p.index: p.features for p in manifest.parts}
    for i, n in record.parts:
        if have.get(i) != n:
            raise SearchError(f"{d} covers part {i} with {n} rows, which {out_dir}'s "
                              f"manifest does not list so: run `estimator-vgg index "
                              f"{out_dir} --rebuild`")
    covered = {i for i, _ in record.parts}
    return [p.index for p in manifest.parts if p.index not in covered and p.features]


def _read_part(out_dir: Path, fmt: str, index: int) -> Tuple[List[str], np.ndarray]:
    return writer.read_part(out_dir, fmt, index)


class Pca:
    """x -> (x - mean) @ components.T * scale: the first principal components, whitened
    (scale = 1 / standard deviation) or not (scale = 1). Learnt from the sample's Gram matrix
    (one sgemm) and a symmetric eigendecomposition."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: np.ndarray):
        self.mean = mean.astype(np.float32)
        self.components = np.ascontiguousarray(components, np.float32)
        self.scale = scale.astype(np.float32)
        self._proj = np.ascontiguousarray((self.components * self.scale[:, None]).T)
        self._offset = self.mean @ self._proj

    @classmethod
    def learn(cls, x: np.ndarray, dims: int, whiten: bool) -> "Pca":
        n = len(x)
        if n < 2:
            raise SearchError(f"--pca needs at least 2 rows to learn from, the sample has {n}")
        mean = x.mean(axis=0, dtype=np.float64)
        gram = (x.T @ x).astype(np.float64) / n
        cov = gram - np.outer(mean, mean)
        values, vectors = np.linalg.eigh(cov)          # ascending
        order = np.argsort(values)[::-1][:dims]
        values = np.maximum(values[order], 1e-12)
        scale = 1 / np.sqrt(values) if whiten else np.ones(dims)
        return cls(mean, vectors[:, order].T, scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self._proj - self._offset

    def save(self, f: Path) -> None:
        writer.commit_file(Path(f), lambda fh: np.savez(fh, mean=self.mean,
                                                        components=self.components,
                                                        scale=self.scale))

    @classmethod
    def load(cls, f: Path) -> "Pca":
        with np.load(f) as z:
            return cls(z["mean"], z["components"], z["scale"])


class _Codes:
    """unit fc7 -> codes (the PCA and the second normalisation, when there is a PCA)."""

    def __init__(self, transform=None):
        self.transform = transform

    def __call__(self, fc7: np.ndarray) -> np.ndarray:
        x = _unit(fc7)
        if self.transform is None:
            return np.ascontiguousarray(x)
        return np.ascontiguousarray(_unit(self.transform.apply(x)))


# ---------------------------------------------------------------------------------- build

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


def _sample(out_dir: Path, manifest: Manifest, rows: int, seed: int = 0) -> np.ndarray:
    """About `rows` fc7 rows from parts spread evenly over the output (not all parts are read)."""
    parts = [p for p in manifest.parts if p.features]
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
        _, fc7 = _read_part(out_dir, manifest.output_format, p.index)
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


def _set_nprobe(faiss, idx, nprobe: int) -> None:
    if hasattr(idx, "nprobe"):
        idx.nprobe = nprobe
    if hasattr(idx, "hnsw"):
        idx.hnsw.efSearch = max(64, nprobe * 4)
    if isinstance(idx, faiss.IndexIVF):
        idx.parallel_mode = 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_atomic(final: Path, data_writer: Callable) -> None:
    writer.commit_file(final, data_writer)


@dataclass
class BuildReport:
    record: Record
    added_parts: int
    added_rows: int
    seconds: float
    fresh: bool
    lines: List[str] = field(default_factory=list)


def build_index(out_dir: Path, kind: Optional[str] = None, pca: Optional[int] = None,
                whiten: bool = False, memory_mb: int = DEFAULT_MEMORY_MB,
                nprobe: Optional[int] = None, train_rows: Optional[int] = None,
                rebuild: bool = False, say: Callable[[str], None] = print) -> BuildReport:
    """Build `<out_dir>/index/`, or add to it the parts committed since it was built."""
    from estimator_vgg.store import ensure_output_id, lock_output

    faiss = import_faiss()
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise SearchError(f"{out_dir} does not exist: give the output.dir of a job")
    manifest_of(out_dir)
    if kind is not None and kind not in KINDS:
        raise SearchError(f"unknown --kind {kind!r}: one of {', '.join(KINDS)}")
    if pca is not None and not 1 <= pca < FC7_DIM:
        raise SearchError(f"--pca {pca}: give a number of dimensions from 1 to {FC7_DIM - 1}")
    t0 = time.time()
    lock = lock_output(out_dir)
    try:
        manifest = ensure_output_id(out_dir)
        rows_total = sum(p.features for p in manifest.parts)
        if rows_total == 0:
            raise SearchError(f"{out_dir} has no feature rows yet (its manifest lists "
                              f"{len(manifest.parts)} parts, none with features): run the "
                              f"job first")
        d = index_dir(out_dir)
        for f in d.glob("*.tmp") if d.is_dir() else ():   # a killed build's
            f.unlink()
        record = None if rebuild else Record.read(d)
        if record is not None:
            try:
                _check_belongs(record, manifest, out_dir)
            except SearchError as e:
                say(f"rebuilding the index: {e}")
                record = None
        if record is not None and ((pca is not None and pca != record.pca)
                                   or (kind not in (None, "auto", record.kind))
                                   or (whiten and not record.whiten)):
            say(f"rebuilding the index: it is {record.describe()} (pca {record.pca}), "
                f"other settings were asked for")
            record = None
        if record is None:
            return _build_fresh(faiss, out_dir, manifest, kind or "auto", pca, whiten,
                                memory_mb, nprobe, train_rows, say, t0)
        return _add_new(faiss, out_dir, manifest, record, nprobe, say, t0)
    finally:
        lock.close()


def _build_fresh(faiss, out_dir, manifest, kind, pca, whiten, memory_mb, nprobe, train_rows,
                 say, t0) -> BuildReport:
    rows = sum(p.features for p in manifest.parts)
    dims = pca or FC7_DIM
    if kind == "auto":
        kind, reason = choose_kind(rows, dims, memory_mb)
        say(f"kind auto: {kind}: {reason}")
    else:
        reason = f"--kind {kind}"
    # the sample: at most a quarter of the budget of full fc7 rows
    cap = int(memory_mb * 2**20 / 4 / (FC7_DIM * 4))
    sample_rows = min(rows, train_rows or min(50_000, cap))
    if cap < 256 and sample_rows > cap:
        raise SearchError(f"--memory-mb {memory_mb} is too small for a training sample: give "
                          f"at least 256")
    needs_sample = pca is not None or kind in ("ivf", "ivfpq")
    d = index_dir(out_dir)
    d.mkdir(exist_ok=True)
    for f in (VECTORS, TRANSFORM, CODES, OFFSETS, PATHS, RECORD, DUPLICATES):
        (d / f).unlink(missing_ok=True)
    transform = None
    detail = ""
    sample = None
    if needs_sample:
        ts = time.time()
        sample = _sample(out_dir, manifest, sample_rows)
        sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)  # in place
        say(f"sample: {len(sample)} rows from the parts ({time.time() - ts:.1f} s)")
    if pca is not None:
        ts = time.time()
        transform = Pca.learn(sample, pca, whiten)
        say(f"PCA {FC7_DIM} -> {pca}{' (whitened)' if whiten else ''} learnt on {len(sample)} "
            f"rows ({time.time() - ts:.1f} s)")
    codes_of = _Codes(transform)
    idx, detail = _new_index(faiss, kind, dims, rows, len(sample) if sample is not None else 0,
                             memory_mb)
    if not idx.is_trained:
        ts = time.time()
        # the sample is unit already: no second copy of it
        train = _unit(transform.apply(sample)) if transform is not None else sample
        idx.train(np.ascontiguousarray(train))
        say(f"{kind} ({detail}) trained on {len(train)} rows ({time.time() - ts:.1f} s)")
    del sample
    nprobe = nprobe or DEFAULT_NPROBE
    record = Record(output_id=manifest.output_id, fingerprint=manifest.fingerprint.to_dict(),
                    parts=[], kind=kind, pca=pca, whiten=whiten, dims=dims, nprobe=nprobe,
                    reason=reason + (f"; {detail}" if detail else ""),
                    faiss_version=faiss.__version__, built=_now(), updated=_now())
    if transform is not None:
        transform.save(d / TRANSFORM)
    return _add_parts(faiss, out_dir, manifest, record, idx, codes_of, [], say, t0, fresh=True)


def _load_paths(d: Path) -> List[str]:
    import pyarrow.parquet as pq
    f = d / PATHS
    return pq.read_table(f).column("path").to_pylist() if f.is_file() else []


def _add_new(faiss, out_dir, manifest, record, nprobe, say, t0) -> BuildReport:
    d = index_dir(out_dir)
    idx = faiss.read_index(str(d / VECTORS))
    transform = Pca.load(d / TRANSFORM) if record.pca else None
    if nprobe:
        record.nprobe = nprobe
    paths = _load_paths(d)
    if len(paths) != record.rows or idx.ntotal != record.rows:
        raise SearchError(f"{d} is inconsistent ({idx.ntotal} vectors, {len(paths)} paths, "
                          f"{record.rows} rows in {RECORD}): run `estimator-vgg index "
                          f"{out_dir} --rebuild`")
    return _add_parts(faiss, out_dir, manifest, record, idx, _Codes(transform), paths, say,
                      t0, fresh=False)


def _add_parts(faiss, out_dir, manifest, record, idx, codes_of, paths, say, t0,
               fresh) -> BuildReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = index_dir(out_dir)
    covered = {i for i, _ in record.parts}
    new = [p for p in manifest.parts if p.index not in covered and p.features]
    codes_file = d / CODES
    # rows past the record are a killed build's: cut them before appending
    if record.pca:
        with open(codes_file, "ab") as f:
            f.truncate(record.rows * record.dims * 4)
    with open(d / OFFSETS, "ab") as f:
        f.truncate(record.rows * 8)
    added = 0
    ta = time.time()
    with open(codes_file, "ab") if record.pca else _nothing() as cf, \
            open(d / OFFSETS, "ab") as of:
        for p in new:
            ps, fc7 = _read_part(out_dir, manifest.output_format, p.index)
            codes = codes_of(fc7)
            idx.add(codes)
            if cf is not None:
                cf.write(codes.astype(np.float32).tobytes())
            of.write(_row_offsets(out_dir, manifest.output_format, p.index, len(ps)).tobytes())
            paths.extend(ps)
            record.parts.append((p.index, len(ps)))
            added += len(ps)
        for f in (cf, of):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
    if new:
        say(f"added {len(new)} parts, {added} rows ({time.time() - ta:.1f} s)")
    record.parts.sort()
    if new or fresh:
        tmp = d / f"{VECTORS}.{os.getpid()}.tmp"   # faiss writes it; no copy in memory
        faiss.write_index(idx, str(tmp))
        os.replace(tmp, d / VECTORS)
        table = pa.table({"path": pa.array(paths, pa.string())})
        _write_atomic(d / PATHS, lambda f: pq.write_table(table, f))
        (d / DUPLICATES).unlink(missing_ok=True)   # its pairs are of fewer rows
        record.updated = _now()
        text = record.to_json()
        _write_atomic(d / RECORD, lambda f: f.write(text))
    else:
        say(f"the index is up to date: {record.describe()}")
    return BuildReport(record, len(new), added, time.time() - t0, fresh)


def _part_file(out_dir: Path, fmt: str, index: int) -> Path:
    return Path(out_dir) / writer.FEATURES / f"{writer.part_name(index)}{writer._EXT[fmt]}"


def _row_offsets(out_dir: Path, fmt: str, index: int, rows: int) -> np.ndarray:
    """Where each row's fc7 starts in its part's file, or -1s (not the fast layout)."""
    groups = writer.fast_row_groups(_part_file(out_dir, fmt, index)) if fmt == "parquet" \
        else None
    if groups is None or sum(n for n, _ in groups) != rows:
        return np.full(rows, -1, np.int64)
    return np.concatenate([off + ROW_BYTES * np.arange(n, dtype=np.int64)
                           for n, off in groups]) if groups else np.zeros(0, np.int64)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# ---------------------------------------------------------------------------------- search

class SearchIndex:
    """An output's index, loaded once; searches by vectors, image files or output paths.

    With `rescore` (the default), an index over reduced or compressed codes gives
    k * CANDIDATES candidates and they are re-scored on the full fc7, read row by row from the
    parts, so scores are cosines of fc7 whatever the index holds; rescore=False keeps the
    codes' own scores (faster, approximate; `scores_are` says which). Parts the output
    committed after the index was built are searched exactly (their rows read on first use);
    `stale_parts` lists them.
    """

    def __init__(self, out_dir: Path, faiss, record: Record, idx, transform, stale: List[int],
                 manifest: Manifest, rescore: bool = True):
        self.out_dir = Path(out_dir)
        self.record = record
        self._faiss = faiss
        self._idx = idx
        self._codes_of = _Codes(transform)
        self.stale_parts = stale
        self._manifest = manifest
        self._paths: Optional[List[str]] = None
        self._row_of: Optional[Dict[str, int]] = None
        self._extra: Optional[Tuple[List[str], np.ndarray, np.ndarray]] = None
        self._codes = None
        self._offsets = None
        self._files: Dict[int, int] = {}
        self._part_cache: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self.rescore = rescore and not record.keeps_fc7
        _set_nprobe(faiss, idx, record.nprobe)
        self._starts = np.cumsum([0] + [n for _, n in record.parts])

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  interpreter shutdown
            pass

    # -- what it is
    @property
    def rows(self) -> int:
        return self.record.rows

    @property
    def scores_are(self) -> str:
        return self.record.scores_are(self.rescore)

    def describe(self) -> str:
        s = f"{self.record.describe()} in {index_dir(self.out_dir)}"
        if self.stale_parts:
            s += (f"; STALE: {len(self.stale_parts)} parts committed since are not in it and "
                  f"are searched exactly (run `estimator-vgg index {self.out_dir}` to add them)")
        return s

    @property
    def paths(self) -> List[str]:
        if self._paths is None:
            self._paths = _load_paths(index_dir(self.out_dir))
        return self._paths

    def set_nprobe(self, nprobe: int) -> None:
        _set_nprobe(self._faiss, self._idx, nprobe)

    # -- rows
    def extra(self) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """(paths, codes, unit fc7) of the rows the index lacks (its stale parts)."""
        if self._extra is None:
            paths, codes, full = [], [], []
            for i in self.stale_parts:
                ps, fc7 = _read_part(self.out_dir, self._manifest.output_format, i)
                paths.extend(ps)
                codes.append(self._codes_of(fc7))
                full.append(_unit(fc7))
            self._extra = (paths,
                           np.concatenate(codes) if codes else
                           np.zeros((0, self.record.dims), np.float32),
                           np.concatenate(full) if full else np.zeros((0, FC7_DIM), np.float32))
        return self._extra

    def _stored_codes(self):
        if self._codes is None and self.record.pca:
            self._codes = np.memmap(index_dir(self.out_dir) / CODES, np.float32, "r",
                                    shape=(self.record.rows, self.record.dims))
        return self._codes

    def _row_offsets(self) -> np.ndarray:
        if self._offsets is None:
            f = index_dir(self.out_dir) / OFFSETS
            self._offsets = (np.memmap(f, np.int64, "r", shape=(self.rows,))
                             if f.is_file() and self.rows else np.full(self.rows, -1, np.int64))
        return self._offsets

    def fc7_of_rows(self, ids: np.ndarray) -> np.ndarray:
        """The unit fc7 of rows `ids` (index rows, then extra rows), read from the parts: 16 KiB
        each for parts in the fast layout, the whole part otherwise."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), FC7_DIM), np.float32)
        offsets = self._row_offsets()
        fmt = self._manifest.output_format
        order = np.argsort(ids, kind="stable")
        for n in order:
            i = int(ids[n])
            if i >= self.rows:
                out[n] = self.extra()[2][i - self.rows]
                continue
            part = int(np.searchsorted(self._starts, i, side="right") - 1)
            index = self.record.parts[part][0]
            off = int(offsets[i])
            if off >= 0:
                fd = self._files.get(index)
                if fd is None:
                    if len(self._files) >= 64:
                        os.close(self._files.pop(next(iter(self._files))))
                    fd = os.open(_part_file(self.out_dir, fmt, index), os.O_RDONLY)
                    self._files[index] = fd
                buf = os.pread(fd, ROW_BYTES, off)
                if len(buf) != ROW_BYTES:
                    raise SearchError(f"{_part_file(self.out_dir, fmt, index)} is shorter than "
                                      f"{index_dir(self.out_dir)} says: run `estimator-vgg "
                                      f"index {self.out_dir} --rebuild`")
                out[n] = np.frombuffer(buf, np.float32)
            else:
                cached, fc7 = self._part_cache
                if cached != index:
                    fc7 = _read_part(self.out_dir, fmt, index)[1]
                    self._part_cache = (index, fc7)
                out[n] = fc7[i - self._starts[part]]
        return _unit(out)

    def codes(self, fc7: np.ndarray) -> np.ndarray:
        return self._codes_of(np.atleast_2d(np.asarray(fc7, np.float32)))

    # -- search
    def _search(self, full: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [n, k] for unit fc7 queries; ids past rows are extra rows."""
        q = self._codes_of(full)
        kk = min(max(k * CANDIDATES, 100) if self.rescore else k, self.rows)
        scores, ids = self._idx.search(q, kk)
        if self.rescore:
            for r in range(len(q)):
                ok = ids[r] >= 0
                scores[r, ok] = self.fc7_of_rows(ids[r, ok]) @ full[r]
        scores = np.where(ids >= 0, scores, -np.inf)
        xpaths, xcodes, xfull = self.extra()
        if len(xpaths):
            xs = full @ xfull.T if self.rescore or self.record.keeps_fc7 else q @ xcodes.T
            scores = np.concatenate([scores, xs], axis=1)
            ids = np.concatenate([ids, np.arange(len(xpaths))[None, :].repeat(len(q), 0)
                                  + self.rows], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def path_of(self, i: int) -> str:
        return self.paths[i] if i < self.rows else self.extra()[0][i - self.rows]

    def _matches(self, scores, ids, exclude: Optional[int] = None, k: int = 10) -> List[Match]:
        out = [Match(self.path_of(int(i)), float(s)) for s, i in zip(scores, ids)
               if i >= 0 and np.isfinite(s) and i != exclude]
        return sorted(out, key=lambda m: (-m.score, m.path))[:k]  # ties by path, as exact

    def search(self, vectors: np.ndarray, k: int = 10) -> List[List[Match]]:
        """For each fc7 row of `vectors` (one row or [n, 4096]), its k nearest rows."""
        full = _unit(np.atleast_2d(np.asarray(vectors, np.float32)))
        if full.shape[1] != FC7_DIM:
            raise SearchError(f"query vectors have {full.shape[1]} values, fc7 has {FC7_DIM}")
        scores, ids = self._search(full, k)
        return [self._matches(s, i, k=k) for s, i in zip(scores, ids)]

    def row_of(self, path: str) -> Optional[int]:
        if self._row_of is None:
            self._row_of = {p: i for i, p in enumerate(self.paths)}
            for j, p in enumerate(self.extra()[0]):
                self._row_of.setdefault(p, self.rows + j)
        return self._row_of.get(path)

    def search_paths(self, paths: Sequence[str], k: int = 10) -> List[List[Match]]:
        """For each path of the output, its k nearest other rows (the row itself left out)."""
        rows = []
        for p in paths:
            i = self.row_of(p)
            if i is None:
                raise SearchError(f"{p!r} is not a path in {self.out_dir}'s features "
                                  f"(relative to input.dir, as in the `path` column)")
            rows.append(i)
        full = self.fc7_of_rows(np.array(rows))
        scores, ids = self._search(full, k + 1)
        return [self._matches(s, j, exclude=i, k=k) for s, j, i in zip(scores, ids, rows)]

    def search_files(self, files: Sequence, k: int = 10) -> List[List[Match]]:
        """For each image file, embedded with the output's weights, its k nearest rows."""
        from estimator_vgg.neighbors import embed_file
        return self.search(np.stack([embed_file(self.out_dir, Path(f)) for f in files]), k)

    # -- duplicates
    def duplicate_pairs(self, threshold: float, batch: int = 4096
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) of every pair of rows with score >= threshold, a < b (row ids as in
        path_of), by range search over the index. With re-scoring, candidates are taken at
        DUP_MARGIN below the threshold on the codes and kept on the full fc7's cosine."""
        idx, stored = self._idx, self._stored_codes()
        margin = DUP_MARGIN if self.rescore else 0.0
        if self.record.kind == "ivfpq":
            margin = max(margin, 0.05)
        radius = threshold - margin - 1e-6
        A, B, S = [], [], []

        def queries():
            if stored is not None:
                for s in range(0, self.rows, batch):
                    yield s, np.ascontiguousarray(stored[s:s + batch])
            else:
                start = 0
                for i, _ in self.record.parts:
                    _, fc7 = _read_part(self.out_dir, self._manifest.output_format, i)
                    for s in range(0, len(fc7), batch):
                        yield start + s, self._codes_of(fc7[s:s + batch])
                    start += len(fc7)

        def rescored(a, b, s):
            if not self.rescore or not len(a):
                return s
            rows, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
            full = self.fc7_of_rows(rows)
            return np.einsum("ij,ij->i", full[inv[:len(a)]], full[inv[len(a):]])

        def keep(a, b, s):
            m = a < b
            a, b, s = a[m], b[m], s[m]
            s = rescored(a, b, s)
            m = s >= threshold
            A.append(a[m]); B.append(b[m]); S.append(s[m])  # noqa: E702

        for start, q in queries():
            lims, dist, ids = idx.range_search(q, radius)
            keep(np.repeat(np.arange(start, start + len(q)), np.diff(lims.astype(np.int64))),
                 ids.astype(np.int64), dist)
        xpaths, xcodes, xfull = self.extra()
        if len(xpaths):   # the rows the index lacks: against the index, and among themselves
            exact = self.rescore or self.record.keeps_fc7
            for s in range(0, len(xpaths), batch):
                q = np.ascontiguousarray(xcodes[s:s + batch])
                lims, dist, ids = idx.range_search(q, radius)
                keep(ids.astype(np.int64),
                     np.repeat(np.arange(s, s + len(q)), np.diff(lims.astype(np.int64)))
                     + self.rows, dist)
                sims = (xfull[s:s + batch] @ xfull.T) if exact else q @ xcodes.T
                i, j = np.nonzero(sims >= threshold)
                m = i + s < j
                A.append(i[m] + s + self.rows); B.append(j[m] + self.rows)  # noqa: E702
                S.append(sims[i[m], j[m]])
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
        return cat(A, np.int64), cat(B, np.int64), cat(S, np.float32)

    def duplicates(self, threshold: float) -> List[List[Match]]:
        """Groups linked by score >= threshold (single linkage), largest first, as
        neighbors.duplicate_groups gives them."""
        return groups_of(*self.duplicate_pairs(threshold), self.path_of)


def write_pairs(file: Path, a, b, s, path_of: Callable[[int], str]) -> None:
    """The pairs as Parquet: path_a, path_b (path_a < path_b), score; best first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa_, pb_ = [path_of(int(i)) for i in a], [path_of(int(j)) for j in b]
    swap = [x > y for x, y in zip(pa_, pb_)]
    pa_, pb_ = ([y if w else x for x, y, w in zip(pa_, pb_, swap)],
                [x if w else y for x, y, w in zip(pa_, pb_, swap)])
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), pa_[i], pb_[i]))
    table = pa.table({"path_a": pa.array([pa_[i] for i in order], pa.string()),
                      "path_b": pa.array([pb_[i] for i in order], pa.string()),
                      "score": pa.array(np.asarray(s, np.float32)[order], pa.float32())})
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    writer.commit_file(Path(file), lambda f: pq.write_table(table, f))


def load_index(out_dir: Path, rescore: bool = True) -> SearchIndex:
    """The index of an output, checked against it: refused if it is another output's or of
    other weights or preprocessing; parts committed since it was built are listed as stale
    and searched exactly. rescore: see SearchIndex."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise SearchError(f"{out_dir} does not exist: give the output.dir of a job")
    manifest = manifest_of(out_dir)
    d = index_dir(out_dir)
    record = Record.read(d)
    if record is None:
        raise SearchError(f"{out_dir} has no index ({d / RECORD} is missing): build it with "
                          f"`estimator-vgg index {out_dir}`")
    faiss = import_faiss()
    stale = _check_belongs(record, manifest, out_dir)
    idx = faiss.read_index(str(d / VECTORS))
    if idx.ntotal != record.rows:
        raise SearchError(f"{d / VECTORS} holds {idx.ntotal} vectors but {d / RECORD} says "
                          f"{record.rows}: an index build was stopped; run `estimator-vgg "
                          f"index {out_dir}` again")
    transform = Pca.load(d / TRANSFORM) if record.pca else None
    return SearchIndex(out_dir, faiss, record, idx, transform, stale, manifest, rescore)


def has_index(out_dir: Path) -> bool:
    return (index_dir(out_dir) / RECORD).is_file()
