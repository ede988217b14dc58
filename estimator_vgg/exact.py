"""Exact search: cosine similarity of fc7 against every row of an output, one part at a time.

    searcher = ExactSearcher("out/demo")       # or search.open_searcher(out, exact=True)
    searcher.search(vectors, k=5); searcher.search_paths(["a.jpg"]); searcher.duplicate_pairs(0.95)

Memory holds one part (plus the k best so far), so the search scales to outputs larger than
memory; the duplicate search compares every pair of parts, so its time grows with the square
of the number of rows. Light at import.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.output import Output
from estimator_vgg.parquet_layout import RowReader, row_offsets
from estimator_vgg.recipe import FC7_DIM
from estimator_vgg.searcher import Match, Searcher, SearchError, unit


class ExactSearcher(Searcher):
    """Exact cosine similarity over every committed part of an output."""
    scores_are = "cosine similarity of fc7"

    def __init__(self, where, manifest=None):
        """where: an output.Output, or an output folder (or URI) with its manifest, if read."""
        self.output = where if isinstance(where, Output) else Output(where, manifest)
        self.out_dir = self.output.dir
        self._parts = [p for p in self.output.parts if p.features]
        self._starts = np.cumsum([0] + [p.features for p in self._parts])
        self._paths: Dict[int, List[str]] = {}   # position in _parts -> its feature paths

    def describe(self) -> str:
        return "cosine similarity of fc7, exact search"

    # -- rows
    def _paths_of(self, k: int) -> List[str]:
        if k not in self._paths:
            self._paths[k] = self.output.feature_paths(self._parts[k].index)
        return self._paths[k]

    def row_of(self, path: str) -> Optional[int]:
        for k in range(len(self._parts)):
            paths = self._paths_of(k)
            if path in paths:
                return int(self._starts[k]) + paths.index(path)
        return None

    def path_of(self, row: int) -> str:
        k = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self._paths_of(k)[row - int(self._starts[k])]

    def vectors_of(self, rows: Sequence[int]) -> np.ndarray:
        """The fc7 of `rows`: 16 KiB each from a part in the fast layout, the part otherwise."""
        ks = np.searchsorted(self._starts, np.asarray(rows), side="right") - 1
        positions = [int(r - self._starts[k]) for r, k in zip(rows, ks)]
        parts = [self._parts[k].index for k in ks]
        offsets = [int(self._offsets(k)[p]) for k, p in zip(ks, positions)]
        reader = RowReader(self.output.open_features, lambda i: self.output.read_part(i)[1])
        return reader.rows(parts, positions, offsets)

    def _offsets(self, k: int) -> np.ndarray:
        part = self._parts[k]
        if self.output.fmt != "parquet":
            return np.full(part.features, -1, np.int64)
        with self.output.open_features(part.index) as f:
            return row_offsets(f, part.features)

    def _each_part(self, skip: int = 0):
        """(position, first row id, paths, fc7) of every part with feature rows."""
        for k in range(skip, len(self._parts)):
            paths, fc7 = self.output.read_part(self._parts[k].index)
            self._paths.setdefault(k, paths)
            yield k, int(self._starts[k]), paths, fc7

    # -- search
    def search(self, vectors: np.ndarray, k: int = 10,
               exclude: Optional[Sequence[int]] = None) -> List[List[Match]]:
        full = unit(np.atleast_2d(np.asarray(vectors, np.float32)))
        if full.shape[1] != FC7_DIM:
            raise SearchError(f"query vectors have {full.shape[1]} values, fc7 has {FC7_DIM}")
        n = len(full)
        best_s = np.zeros((n, 0), np.float32)
        best_i = np.zeros((n, 0), np.int64)
        for _, first, paths, fc7 in self._each_part():
            scores = full @ unit(fc7).T
            ids = np.arange(first, first + len(paths))
            if exclude is not None:
                for q, row in enumerate(exclude):
                    if first <= row < first + len(paths):
                        scores[q, row - first] = -np.inf
            best_s = np.concatenate([best_s, scores], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            if best_s.shape[1] > k:
                keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(best_s, keep, 1)
                best_i = np.take_along_axis(best_i, keep, 1)
        return [sorted((Match(self.path_of(int(i)), float(s)) for s, i in zip(ss, ii)
                        if np.isfinite(s)), key=lambda m: (-m.score, m.path))[:k]
                for ss, ii in zip(best_s, best_i)]

    def search_paths(self, paths: Sequence[str], k: int = 10) -> List[List[Match]]:
        rows = self.rows_of(paths)
        return self.search(self.vectors_of(rows), k, exclude=rows)

    def duplicate_pairs(self, threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair exactly, comparing every pair of parts (time grows with the square of
        the rows)."""
        A: List[np.ndarray] = []
        B: List[np.ndarray] = []
        S: List[np.ndarray] = []

        def link(sims: np.ndarray, start_a: int, start_b: int) -> None:
            i, j = np.nonzero(sims >= threshold)
            A.append(i + start_a)
            B.append(j + start_b)
            S.append(sims[i, j])

        for k, start_a, _, fa in self._each_part():
            ua = unit(fa)
            within = ua @ ua.T  # each pair once: above the diagonal
            link(np.triu(within, k=1) + np.tril(np.full_like(within, -np.inf)), start_a, start_a)
            for _, start_b, _, fb in self._each_part(skip=k + 1):
                link(ua @ unit(fb).T, start_a, start_b)
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
        return cat(A, np.int64), cat(B, np.int64), cat(S, np.float32)
