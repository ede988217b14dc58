"""Searching an output through its index (`estimator-vgg index` built it: index.py).

    idx = load_index("out/big")                      # once, in a notebook
    idx.search(vectors, k=10)     idx.search_paths(["a/b.jpg"])     idx.search_files([file])
    idx.duplicate_pairs(0.98)                        # every pair at or above the threshold

With re-scoring (the default), an index over reduced or compressed codes gives
k * CANDIDATES candidates and they are re-scored on the full fc7, read row by row from the
parts (parquet_layout.RowReader: each part read at most once per search), so scores are
cosines of fc7 whatever the index holds. Parts the output committed after the index was built
are searched exactly. Light at import (faiss comes with load_index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.index_files import (CODES, OFFSETS, PATHS, RECORD, TRANSFORM, VECTORS, Codes,
                                       Pca, Record, check_belongs, import_faiss, local_dir,
                                       set_nprobe)
from estimator_vgg.output import Output
from estimator_vgg.parquet_layout import RowReader
from estimator_vgg.query import embed_file
from estimator_vgg.recipe import FC7_DIM
from estimator_vgg.searcher import (INDEX_DIR, Match, Searcher, SearchError, open_output,
                                    unit)

CANDIDATES = 10             # re-scoring: k * CANDIDATES candidates from the codes (at least 100)
DUP_MARGIN = 0.02           # re-scoring duplicates: candidates at threshold - margin on codes


class SearchIndex(Searcher):
    """An output's index, loaded once; searches by vectors, image files or output paths.

    rescore=False keeps the codes' own scores (faster, approximate; `scores_are` says which).
    `stale_parts` lists the parts committed since the index was built (searched exactly, their
    rows read on first use).
    """

    def __init__(self, output: Output, faiss, record: Record, idx, transform, stale: List[int],
                 rescore: bool = True, index_files_dir: Optional[Path] = None,
                 mapped: bool = False):
        self.out_dir, self.output = output.dir, output
        self.dir = index_files_dir or local_dir(output)   # where this machine reads its files
        self.record, self.stale_parts = record, stale
        self._faiss, self._idx = faiss, idx
        self._codes_of = Codes(transform)
        self._paths: Optional[List[str]] = None
        self._column = None                       # the path column, as Arrow holds it
        self._row_of: Optional[Dict[str, int]] = None
        self._extra_paths: Optional[List[str]] = None
        self._extra: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._codes = self._offsets = None
        self.rescore = rescore and not record.keeps_fc7
        self._mapped, self._nprobe = mapped, record.nprobe   # idx memory-mapped (load_index)
        set_nprobe(faiss, idx, record.nprobe)
        self._starts = np.cumsum([0] + [n for _, n in record.parts])
        self._reader = RowReader(output.open_features, lambda i: output.read_part(i)[1])

    # -- what it is
    @property
    def rows(self) -> int:
        return self.record.rows

    @property
    def scores_are(self) -> str:
        return self.record.scores_are(self.rescore)

    def describe(self) -> str:
        s = f"{self.record.describe()} in {self.out_dir}/{INDEX_DIR}"
        if self.stale_parts:
            s += (f"; STALE: {len(self.stale_parts)} parts committed since are not in it and "
                  f"are searched exactly (run `estimator-vgg index {self.out_dir}` to add them)")
        return s

    def how(self) -> str:
        return f"{self.scores_are}; index: {self.describe()}"

    @property
    def paths(self) -> List[str]:
        """Every indexed row's path, as a list (read_column() is what searches use)."""
        if self._paths is None:
            column = self.read_column()
            self._paths = column.to_pylist() if column is not None else []
        return self._paths

    def read_column(self):
        """The indexed rows' paths as an Arrow column: found and taken without making a
        Python string of each (a query by path at a million rows)."""
        if self._column is None:
            import pyarrow.parquet as pq
            f = self.dir / PATHS
            self._column = (pq.read_table(f, columns=["path"]).column("path") if f.is_file()
                            else None)
        return self._column

    def set_nprobe(self, nprobe: int) -> None:
        self._nprobe = nprobe
        set_nprobe(self._faiss, self._idx, nprobe)

    def _scanning_index(self):
        """The index for a search from every row (the duplicates): read whole, once. A
        mapped index suits a few queries, which touch only the lists they probe; a range
        search from every row touches every list many times, and ran 1.1x-1.3x slower mapped
        (benchmarks/index_mmap.py: 100,000 rows, 20,000 queries, nprobe 16)."""
        if self._mapped:
            self._idx = self._faiss.read_index(str(self.dir / VECTORS))
            set_nprobe(self._faiss, self._idx, self._nprobe)
            self._mapped = False
        return self._idx

    # -- rows
    def extra_paths(self) -> List[str]:
        """The paths of the rows the index lacks (its stale parts): path columns only."""
        if self._extra_paths is None:
            self._extra_paths = [p for i in self.stale_parts
                                 for p in self.output.feature_paths(i)]
        return self._extra_paths

    def extra(self) -> Tuple[np.ndarray, np.ndarray]:
        """(codes, unit fc7) of the rows the index lacks (its stale parts), read once."""
        if self._extra is None:
            full = [unit(self.output.read_part(i)[1]) for i in self.stale_parts]
            full = np.concatenate(full) if full else np.zeros((0, FC7_DIM), np.float32)
            self._extra = (self._codes_of(full), full)
        return self._extra

    def _stored_codes(self):
        if self._codes is None and self.record.pca:
            self._codes = np.memmap(self.dir / CODES, np.float32, "r",
                                    shape=(self.record.rows, self.record.dims))
        return self._codes

    def _row_offsets(self) -> np.ndarray:
        if self._offsets is None:
            f = self.dir / OFFSETS
            self._offsets = (np.memmap(f, np.int64, "r", shape=(self.rows,))
                             if f.is_file() and self.rows else np.full(self.rows, -1, np.int64))
        return self._offsets

    def fc7_of_rows(self, ids: np.ndarray) -> np.ndarray:
        """The unit fc7 of rows `ids` (index rows, then extra rows), read from the parts: 16 KiB
        each for parts in the fast layout, each other part whole and once."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), FC7_DIM), np.float32)
        extra = ids >= self.rows
        if extra.any():
            out[extra] = self.extra()[1][ids[extra] - self.rows]
        inside = ids[~extra]
        if len(inside):
            k = np.searchsorted(self._starts, inside, side="right") - 1
            parts = [self.record.parts[j][0] for j in k]
            try:
                rows = self._reader.rows(parts, inside - self._starts[k],
                                         self._row_offsets()[inside])
            except OSError as e:
                raise SearchError(f"{e}: the parts of {self.out_dir} changed under its index; "
                                  f"run `estimator-vgg index {self.out_dir} --rebuild`") from None
            out[~extra] = unit(rows)
        return out

    def codes(self, fc7: np.ndarray) -> np.ndarray:
        return self._codes_of(np.atleast_2d(np.asarray(fc7, np.float32)))

    # -- search
    def _search(self, full: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [n, k] for unit fc7 queries; ids past rows are extra rows."""
        q = self._codes_of(full)
        kk = min(max(k * CANDIDATES, 100) if self.rescore else k, self.rows)
        scores, ids = self._idx.search(q, kk)
        if self.rescore:  # every query's candidates read together: each part at most once
            ok = ids >= 0
            rows, inv = np.unique(ids[ok], return_inverse=True)
            fc7, at = self.fc7_of_rows(rows), 0
            for r, n in enumerate(ok.sum(1)):
                scores[r, ok[r]] = fc7[inv[at:at + n]] @ full[r]
                at += n
        scores = np.where(ids >= 0, scores, -np.inf)
        if self.stale_parts:
            xcodes, xfull = self.extra()
            xs = full @ xfull.T if self.rescore or self.record.keeps_fc7 else q @ xcodes.T
            scores = np.concatenate([scores, xs], axis=1)
            ids = np.concatenate([ids, np.arange(len(xfull))[None, :].repeat(len(q), 0)
                                  + self.rows], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def path_of(self, i: int) -> str:
        if i >= self.rows:
            return self.extra_paths()[i - self.rows]
        return self._paths[i] if self._paths is not None else self.read_column()[i].as_py()

    def _matches(self, scores, ids, exclude: Optional[int] = None, k: int = 10) -> List[Match]:
        out = [Match(self.path_of(int(i)), float(s)) for s, i in zip(scores, ids)
               if i >= 0 and np.isfinite(s) and i != exclude]
        return sorted(out, key=lambda m: (-m.score, m.path))[:k]  # ties by path, as exact

    def search(self, vectors: np.ndarray, k: int = 10) -> List[List[Match]]:
        full = unit(np.atleast_2d(np.asarray(vectors, np.float32)))
        if full.shape[1] != FC7_DIM:
            raise SearchError(f"query vectors have {full.shape[1]} values, fc7 has {FC7_DIM}")
        scores, ids = self._search(full, k)
        return [self._matches(s, i, k=k) for s, i in zip(scores, ids)]

    def row_of(self, path: str) -> Optional[int]:
        if self._row_of is not None:      # many lookups: a dictionary, made once
            return self._row_of.get(path)
        import pyarrow.compute as pc
        column = self.read_column()
        i = pc.index(column, path).as_py() if column is not None and self.rows else -1
        if i >= 0:
            return i
        extra = self.extra_paths()
        return self.rows + extra.index(path) if path in extra else None

    def _rows_of_many(self) -> None:
        self._row_of = {}
        for i, p in enumerate(self.paths):   # the first row of a path, as pc.index finds
            self._row_of.setdefault(p, i)
        for j, p in enumerate(self.extra_paths()):
            self._row_of.setdefault(p, self.rows + j)

    def search_paths(self, paths: Sequence[str], k: int = 10) -> List[List[Match]]:
        if len(paths) > 8 and self._row_of is None:
            self._rows_of_many()
        rows = self.rows_of(paths)
        full = self.fc7_of_rows(np.array(rows))
        scores, ids = self._search(full, k + 1)
        return [self._matches(s, j, exclude=i, k=k) for s, j, i in zip(scores, ids, rows)]

    def search_files(self, files: Sequence, k: int = 10) -> List[List[Match]]:
        """For each image file, embedded with the output's weights, its k nearest rows."""
        return self.search(np.stack([embed_file(self.output, Path(f)) for f in files]), k)

    # -- duplicates
    def duplicate_pairs(self, threshold: float, batch: int = 4096
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) of every pair of rows with score >= threshold, a < b (row ids as in
        path_of), by range search over the index. With re-scoring, candidates are taken at
        DUP_MARGIN below the threshold on the codes and kept on the full fc7's cosine, all of
        them re-scored together at the end (each part read at most once)."""
        margin = DUP_MARGIN if self.rescore else 0.0
        if self.record.kind == "ivfpq":
            margin = max(margin, 0.05)
        radius = threshold - margin - 1e-6
        A, B, S = [], [], []
        idx = self._scanning_index()
        for start, q in self._query_codes(batch):
            lims, dist, ids = idx.range_search(q, radius)
            a = np.repeat(np.arange(start, start + len(q)), np.diff(lims.astype(np.int64)))
            m = a < ids
            A.append(a[m]); B.append(ids[m].astype(np.int64)); S.append(dist[m])  # noqa: E702
        if self.stale_parts:
            self._extra_pairs(threshold, radius, batch, A, B, S)
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
        a, b, s = cat(A, np.int64), cat(B, np.int64), cat(S, np.float32)
        if self.rescore and len(a):
            rows, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
            full = self.fc7_of_rows(rows)
            s = np.einsum("ij,ij->i", full[inv[:len(a)]], full[inv[len(a):]]).astype(np.float32)
        keep = s >= threshold
        return a[keep], b[keep], s[keep]

    def _query_codes(self, batch: int):
        """(first row, codes) of every indexed row, in batches: the stored codes, or the
        parts' rows coded again."""
        stored = self._stored_codes()
        if stored is not None:
            for s in range(0, self.rows, batch):
                yield s, np.ascontiguousarray(stored[s:s + batch])
            return
        start = 0
        for i, _ in self.record.parts:
            fc7 = self.output.read_part(i)[1]
            for s in range(0, len(fc7), batch):
                yield start + s, self._codes_of(fc7[s:s + batch])
            start += len(fc7)

    def _extra_pairs(self, threshold: float, radius: float, batch: int, A, B, S) -> None:
        """The rows the index lacks: against the index (candidates, as above), and among
        themselves (exactly, or on codes without re-scoring)."""
        xcodes, xfull = self.extra()
        exact = self.rescore or self.record.keeps_fc7
        for s in range(0, len(xfull), batch):
            q = np.ascontiguousarray(xcodes[s:s + batch])
            lims, dist, ids = self._idx.range_search(q, radius)
            A.append(ids.astype(np.int64))
            B.append(np.repeat(np.arange(s, s + len(q)), np.diff(lims.astype(np.int64)))
                     + self.rows)
            S.append(dist)
            sims = (xfull[s:s + batch] @ xfull.T) if exact else q @ xcodes.T
            i, j = np.nonzero(sims >= threshold)
            m = i + s < j
            A.append(i[m] + s + self.rows); B.append(j[m] + self.rows)  # noqa: E702
            S.append(sims[i[m], j[m]])


def load_index(where, rescore: bool = True, manifest=None,
               storage_options: Optional[dict] = None) -> SearchIndex:
    """The index of an output (a folder, an s3:// or gs:// prefix read with storage_options:
    its index fetched once into a local copy), checked against it: refused if it is another
    output's or of other weights or preprocessing; parts committed since it was built are
    listed as stale and searched exactly. rescore: see SearchIndex."""
    output = (where if isinstance(where, Output) else
              Output(where, manifest) if manifest is not None else
              open_output(where, storage_options))
    out_dir, manifest = output.dir, output.manifest
    d = local_dir(output)
    record = Record.read(d)
    if record is None:
        raise SearchError(f"{out_dir} has no index ({out_dir}/{INDEX_DIR}/{RECORD} is "
                          f"missing): build it with `estimator-vgg index {out_dir}`")
    faiss = import_faiss()
    stale = check_belongs(record, manifest, out_dir)
    try:   # mapped, not read: a query touches the lists it probes (a million rows: 1 GB)
        idx, mapped = faiss.read_index(str(d / VECTORS), faiss.IO_FLAG_MMAP), True
    except RuntimeError:   # a kind faiss cannot map
        idx, mapped = faiss.read_index(str(d / VECTORS)), False
    if idx.ntotal != record.rows:
        raise SearchError(f"{d / VECTORS} holds {idx.ntotal} vectors but {d / RECORD} says "
                          f"{record.rows}: an index build was stopped; run `estimator-vgg "
                          f"index {out_dir}` again")
    transform = Pca.load(d / TRANSFORM) if record.pca else None
    return SearchIndex(output, faiss, record, idx, transform, stale, rescore, d, mapped)
