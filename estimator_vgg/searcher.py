"""What every searcher of an output offers (Searcher), and what they share: Match, unit rows,
duplicate groups, the pairs file, the errors. The two searchers are exact.py and
index_search.py; search.py opens the right one.

Every search returns, per query, a list of Match(path, score), best first (ties by path).
Light at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.manifest import ManifestError

INDEX_DIR = "index"               # <output.dir>/index/: what `estimator-vgg index` writes
DUPLICATES = "duplicates.parquet"  # the pairs neighbors --duplicates writes by default


class SearchError(ValueError):
    """The query or the output cannot be used; the message says why."""


@dataclass(frozen=True)
class Match:
    path: str      # as in the features table (relative to input.dir)
    score: float   # cosine similarity to the query, -1..1


def unit(m: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (so inner products are cosines); an all-zero row stays zero
    and scores 0 against anything."""
    m = np.asarray(m, np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.maximum(norms, np.float32(1e-12))


def open_output(where, storage_options: Optional[dict] = None):
    """The output at `where` (a folder, an s3:// or gs:// prefix read with storage_options,
    or an output.Output already open), or SearchError saying what it is not."""
    from types import SimpleNamespace

    from estimator_vgg.output import Output, read_output_manifest
    from estimator_vgg.storage import is_store, location

    if isinstance(where, Output):
        return where
    remote = is_store(str(where))
    if not remote and not Path(where).is_dir():
        raise SearchError(f"{where} does not exist: give the output.dir of a job")
    loc = location(str(where) if remote else Path(where),
                   SimpleNamespace(storage_options=storage_options))
    try:
        manifest = read_output_manifest(loc)
    except ManifestError as e:
        raise SearchError(str(e)) from None
    except OSError as e:   # a store that cannot be read: its words, the URI redacted
        raise SearchError(f"{loc} cannot be read: {e}") from None
    if manifest is None:
        raise SearchError(f"{loc} has no manifest.json: not an estimator-vgg output folder")
    return Output(loc, manifest)


def not_a_query(out_dir, query: str) -> str:
    return (f"{query!r} is neither a path in {out_dir}'s features (relative to input.dir, as "
            f"in the `path` column) nor an image file")


class Searcher:
    """What both searchers offer. Subclasses give rows (row_of, path_of) and searches by
    vectors and paths; duplicates() and pairs_file are shared."""
    out_dir: object      # the output's folder or URI, for messages
    output: object       # the output.Output searched
    scores_are: str

    def describe(self) -> str:
        raise NotImplementedError

    def how(self) -> str:
        """What the scores are and what was searched, for the command's first line."""
        return self.describe()

    def row_of(self, path: str) -> Optional[int]:
        """The row of an output path, or None (the path column only is read)."""
        raise NotImplementedError

    def path_of(self, row: int) -> str:
        raise NotImplementedError

    def rows_of(self, paths: Sequence[str]) -> List[int]:
        """The row of each path (SearchError naming the first that is not in the output)."""
        rows = []
        for p in paths:
            row = self.row_of(p)
            if row is None:
                raise SearchError(f"{p!r} is not a path in {self.out_dir}'s features "
                                  f"(relative to input.dir, as in the `path` column)")
            rows.append(row)
        return rows

    def search(self, vectors: np.ndarray, k: int = 10) -> List[List[Match]]:
        """For each fc7 row of `vectors` (one row or [n, 4096]), its k nearest rows."""
        raise NotImplementedError

    def search_paths(self, paths: Sequence[str], k: int = 10) -> List[List[Match]]:
        """For each path of the output, its k nearest other rows (the row itself left out)."""
        raise NotImplementedError

    def duplicate_pairs(self, threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score): every pair of rows a < b scoring at least `threshold` (row ids as
        path_of takes them)."""
        raise NotImplementedError

    def duplicates(self, threshold: float) -> List[List[Match]]:
        """Groups linked by score >= threshold (single linkage), largest first."""
        return groups_of(*self.duplicate_pairs(threshold), self.path_of)

    @property
    def pairs_file(self) -> Tuple[object, str]:
        """Where --duplicates writes its pairs unless told, as (location, name): beside the
        output's index if it has one, else in the output."""
        loc = self.output.loc
        has_index = loc.exists(f"{INDEX_DIR}/index.json")
        return loc, (f"{INDEX_DIR}/{DUPLICATES}" if has_index else DUPLICATES)


def groups_of(a: np.ndarray, b: np.ndarray, s: np.ndarray,
              path_of: Callable[[int], str]) -> List[List[Match]]:
    """Single-linkage groups of pairs (a, b, score), largest first; each member's score is its
    best similarity to another member of its group."""
    parent: Dict[int, int] = {}
    best: Dict[int, float] = {}

    def find(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, sc in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), np.asarray(s).tolist()):
        best[i] = max(best.get(i, -1.0), sc)
        best[j] = max(best.get(j, -1.0), sc)
        parent[find(i)] = find(j)
    groups: Dict[int, List[int]] = {}
    for i in best:
        groups.setdefault(find(i), []).append(i)
    out = [sorted((Match(path_of(i), best[i]) for i in members), key=lambda m: m.path)
           for members in groups.values()]
    return sorted(out, key=lambda g: (-len(g), g[0].path))


def write_pairs(where: Tuple[object, str], a, b, s, path_of: Callable[[int], str]) -> None:
    """The pairs as Parquet into (location, name): path_a, path_b (path_a < path_b), score;
    best first."""
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
    loc, name = where
    loc.write(name, lambda f: pq.write_table(table, f))
