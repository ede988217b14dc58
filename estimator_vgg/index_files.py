"""What `estimator-vgg index` keeps under <output.dir>/index/, read and checked, for the
builder (index.py) and the searcher (index_search.py).

<output.dir>/index/
  index.json          what the index covers: parts and rows, the output's fingerprint and
                      output_id, the kind, PCA, nprobe (written last: the index is what it says)
  vectors.faiss       the faiss index over the codes (ids: row numbers, in the covered parts'
                      order)
  pca.npz             the PCA (with --pca): mean, components, their scale
  codes.f32           the codes as float32 [rows, DIMS] (with --pca): queries by path,
                      re-scoring of ivfpq candidates, the duplicate search's queries
  offsets.i64         int64 per row: where its 4096 floats start in its part's file (-1 when
                      the part is not in the fast layout of parquet_layout.py), to re-score
                      candidates on the full fc7 by reading just those rows
  paths.parquet       the path of each row
  duplicates.parquet  pairs written by `neighbors --duplicates` (path_a, path_b, score)

What is indexed: each fc7 row scaled to unit length (so inner product is cosine similarity),
then, with --pca DIMS, projected on the first DIMS principal components (learnt on a sample;
--whiten divides each by its standard deviation) and scaled to unit length again (Codes).
Light at import (faiss is imported by import_faiss).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from estimator_vgg.manifest import Fingerprint, Manifest
from estimator_vgg.searcher import DUPLICATES, INDEX_DIR, SearchError, unit
from estimator_vgg.writer import commit_file

RECORD = "index.json"
VECTORS = "vectors.faiss"
TRANSFORM = "pca.npz"
CODES = "codes.f32"
OFFSETS = "offsets.i64"
PATHS = "paths.parquet"
RECORD_VERSION = 1
FILES = (VECTORS, TRANSFORM, CODES, OFFSETS, PATHS, RECORD, DUPLICATES)

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


def index_dir(out_dir) -> Path:
    return Path(out_dir) / INDEX_DIR


def has_index(output) -> bool:
    """Whether the output (an output.Output) has an index."""
    return output.loc.exists(f"{INDEX_DIR}/{RECORD}")


def cache_root() -> Path:
    """Where indexes of outputs on object stores are kept on this machine."""
    return Path(os.environ.get("ESTIMATOR_VGG_INDEX_CACHE") or
                "~/.cache/estimator-vgg/indexes").expanduser()


def local_dir(output, fetch: bool = True) -> Path:
    """The folder this machine searches (and builds) the output's index in: the output's own
    index/ for a folder; for an output on a store, a copy in cache_root(), fetched once and
    fetched again when the store's index.json (which names the output_id, the parts and when
    it was updated) is no longer the copy's."""
    if not output.loc.remote:
        return index_dir(output.dir)
    d = cache_root() / hashlib.sha256(output.loc.uri.encode()).hexdigest()[:16]
    if not fetch:
        return d
    try:
        record = output.loc.read(f"{INDEX_DIR}/{RECORD}")
    except FileNotFoundError:
        return d
    if (d / RECORD).is_file() and (d / RECORD).read_bytes() == record:
        return d
    d.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (d / name).unlink(missing_ok=True)
    for name in FILES:
        if name == RECORD:
            continue
        try:
            data = output.loc.read(f"{INDEX_DIR}/{name}")
        except FileNotFoundError:
            continue
        commit_file(d / name, lambda f, data=data: f.write(data))
    sizes = (json.loads(record).get("files") or {})
    if any(not (d / n).is_file() or (d / n).stat().st_size != size for n, size in sizes.items()) \
            or output.loc.read(f"{INDEX_DIR}/{RECORD}") != record:
        raise SearchError(f"the index under {output.loc}/{INDEX_DIR} is not the one its "
                          f"{RECORD} describes (a build is writing it, or was stopped while "
                          f"writing it): run `estimator-vgg index {output.loc}` again, or wait")
    commit_file(d / RECORD, lambda f: f.write(record))   # last: the copy is what it says
    return d


def publish(output, d: Path, names) -> None:
    """The index files `names` from the local folder `d` to the output's store (index.json
    last, so a reader sees the record only with the files it describes); nothing to do for
    an output in a folder, whose index is built in place."""
    if not output.loc.remote:
        return
    for name in sorted(names, key=lambda n: n == RECORD):
        f = d / name
        if f.is_file():
            output.loc.write(f"{INDEX_DIR}/{name}", f.read_bytes())
        else:
            output.loc.delete(f"{INDEX_DIR}/{name}")


def load_paths(d: Path) -> List[str]:
    import pyarrow.parquet as pq
    f = d / PATHS
    return pq.read_table(f).column("path").to_pylist() if f.is_file() else []


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
    # the size of each file the record describes: a copy fetched from a store is checked
    # against it (a build stopped while publishing, or publishing now, leaves other files)
    files: Optional[Dict[str, int]] = None

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


def check_belongs(record: Record, manifest: Manifest, out_dir) -> List[int]:
    """Refuse an index that is not of this output as it is now; the part indexes it lacks."""
    d = f"{out_dir}/{INDEX_DIR}"
    if record.output_id != manifest.output_id:
        raise SearchError(f"{d} was built from another output (output_id "
                          f"{record.output_id[:8]}, the output's is "
                          f"{(manifest.output_id or 'none')[:8]}): the output was rebuilt or "
                          f"the folder copied over. Run `estimator-vgg index {out_dir} "
                          f"--rebuild`")
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
        commit_file(Path(f), lambda fh: np.savez(fh, mean=self.mean, components=self.components,
                                                 scale=self.scale))

    @classmethod
    def load(cls, f: Path) -> "Pca":
        with np.load(f) as z:
            return cls(z["mean"], z["components"], z["scale"])


class Codes:
    """unit fc7 -> codes (the PCA and the second normalisation, when there is a PCA)."""

    def __init__(self, transform=None):
        self.transform = transform

    def __call__(self, fc7: np.ndarray) -> np.ndarray:
        x = unit(fc7)
        if self.transform is None:
            return np.ascontiguousarray(x)
        return np.ascontiguousarray(unit(self.transform.apply(x)))


def set_nprobe(faiss, idx, nprobe: int) -> None:
    """Lists scanned per query (ivf, ivfpq); hnsw: efSearch from it."""
    if hasattr(idx, "nprobe"):
        idx.nprobe = nprobe
    if hasattr(idx, "hnsw"):
        idx.hnsw.efSearch = max(64, nprobe * 4)
    if isinstance(idx, faiss.IndexIVF):
        idx.parallel_mode = 0
