"""An output as its readers see it: the parts its manifest lists, their files and their rows.

    from estimator_vgg import read_features, iter_parts
    paths, fc7 = read_features("out/demo")          # every row, float32 [n, 4096]
    for paths, fc7 in iter_parts("out/demo"): ...    # one part at a time

    out = Output("out/demo")                         # the manifest, read once
    out.read_part(3); out.part_paths(3); out.error_reasons(); out.open_features(3)

Only the parts the manifest lists are read, so files a killed run left behind are never seen.
Every reader of an output in this package goes through here: search, the index, resume, the
dry run. Light at import.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from estimator_vgg.manifest import (ERRORS, FEATURES, MANIFEST, Manifest, PartRecord, damaged,
                                    part_name, read_manifest)
from estimator_vgg.parquet_layout import read_parquet_part
from estimator_vgg.recipe import FC7_DIM

FEATURE_SUFFIXES = {"parquet": (".parquet",), "npy": (".npy", ".paths.jsonl"),
                    "csv": (".csv",)}  # a features part's files: the first holds the fc7


def read_jsonl(data: str) -> List[str]:
    # split("\n"), not splitlines(): a name may hold U+2028, which JSON leaves unescaped
    return [json.loads(line) for line in data.split("\n") if line]


class Output:
    """The committed parts of an output folder, by their manifest."""

    def __init__(self, out_dir, manifest: Optional[Manifest] = None):
        self.dir = Path(out_dir)
        self.manifest = manifest if manifest is not None else read_manifest(self.dir)
        if self.manifest is None:
            raise FileNotFoundError(f"{self.dir} has no {MANIFEST}: not an estimator-vgg "
                                    f"output, or nothing was written yet")

    @property
    def fmt(self) -> str:
        return self.manifest.output_format

    @property
    def parts(self) -> List[PartRecord]:
        return self.manifest.parts

    # -- files
    def features_file(self, index: int) -> Path:
        """The file of part `index` that holds its fc7."""
        return self.dir / FEATURES / f"{part_name(index)}{FEATURE_SUFFIXES[self.fmt][0]}"

    def errors_file(self, index: int) -> Path:
        return self.dir / ERRORS / f"{part_name(index)}.parquet"

    def part_files(self, index: int) -> List[Path]:
        """Every file of part `index`: its features file(s), then its errors file."""
        d = self.dir / FEATURES
        return ([d / f"{part_name(index)}{s}" for s in FEATURE_SUFFIXES[self.fmt]]
                + [self.errors_file(index)])

    def open_features(self, index: int):
        """Part `index`'s features file, open for reading bytes (unbuffered)."""
        return open(self.features_file(index), "rb", buffering=0)

    def damaged(self, index: int):
        """The OutputError for a listed part whose file is gone."""
        missing = [f for f in self.part_files(index) if not f.is_file()]
        return damaged(self.dir, part_name(index),
                       missing[0] if missing else self.features_file(index))

    # -- rows
    def read_part(self, index: int, out: Optional[np.ndarray] = None
                  ) -> Tuple[List[str], np.ndarray]:
        """(paths, fc7) of the committed part `index`; fc7 into `out` when given (Parquet)."""
        f = self.features_file(index)
        try:
            if self.fmt == "parquet":
                return read_parquet_part(f, out)
            if self.fmt == "npy":
                return self._jsonl(index), np.load(f)
            import pandas as pd
            df = pd.read_csv(f, dtype={"path": str}, keep_default_na=False)
            return df["path"].tolist(), df.iloc[:, 1:].to_numpy(np.float32)
        except FileNotFoundError:
            raise self.damaged(index) from None

    def iter_parts(self, skip: int = 0) -> Iterator[Tuple[List[str], np.ndarray]]:
        """(paths, fc7) per part in row order, one part in memory at a time; `skip` passes
        over the first parts without reading them."""
        for p in self.parts[skip:]:
            yield self.read_part(p.index)

    def read_features(self) -> Tuple[List[str], np.ndarray]:
        """Every row: the matrix is allocated once from the manifest's row counts and filled
        part by part, so the peak memory is the matrix plus one part."""
        matrix = np.empty((sum(p.features for p in self.parts), FC7_DIM), np.float32)
        paths: List[str] = []
        for p in self.parts:
            rows = matrix[len(paths):len(paths) + p.features]
            ps, m = self.read_part(p.index, rows if self.fmt == "parquet" else None)
            if m is not rows:
                rows[...] = m
            paths.extend(ps)
        return paths, matrix

    # -- paths and errors
    def feature_paths(self, index: int) -> List[str]:
        """The paths of part `index`'s feature rows (no fc7 read)."""
        f = self.features_file(index)
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq
                return pq.read_table(f, columns=["path"]).column("path").to_pylist()
            if self.fmt == "npy":
                return self._jsonl(index)
            with open(f, encoding="utf-8", newline="") as fh:
                reader = csv.reader(fh)
                next(reader)
                return [row[0] for row in reader]
        except FileNotFoundError:
            raise self.damaged(index) from None

    def error_rows(self, index: int, columns=("path", "reason", "message")) -> dict:
        """Part `index`'s errors table as {column: list}."""
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(self.errors_file(index), columns=list(columns))
        except FileNotFoundError:
            raise self.damaged(index) from None
        return {c: table.column(c).to_pylist() for c in columns}

    def part_paths(self, index: int) -> List[str]:
        """The paths of part `index`: its feature rows, then its error rows."""
        return self.feature_paths(index) + self.error_rows(index, ("path",))["path"]

    def error_reasons(self) -> List[str]:
        """The reason of every error row, over every committed part."""
        return [r for p in self.parts if p.errors
                for r in self.error_rows(p.index, ("reason",))["reason"]]

    def _jsonl(self, index: int) -> List[str]:
        f = self.dir / FEATURES / f"{part_name(index)}.paths.jsonl"
        return read_jsonl(f.read_text(encoding="utf-8"))


def iter_parts(out_dir, skip: int = 0) -> Iterator[Tuple[List[str], np.ndarray]]:
    """(paths, fc7 float32 [n, 4096]) per features part, in row order, for any output format.

    One part in memory at a time: for outputs larger than memory. `skip` passes over the
    first parts without reading them.
    """
    return Output(out_dir).iter_parts(skip)


def read_features(out_dir) -> Tuple[List[str], np.ndarray]:
    """All rows of an output: (paths, fc7 float32 [n, 4096]), in the table's order.

    The matrix is allocated once from the manifest's row counts and filled part by part, so
    the peak memory is the matrix plus one part (no per-row Python loop, no final concatenate).
    """
    return Output(out_dir).read_features()
