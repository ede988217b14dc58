"""An output as its readers see it: the parts its manifest lists, their files and their rows.

    from estimator_vgg import read_features, iter_parts
    paths, fc7 = read_features("out/demo")          # every row, float32 [n, 4096]
    for paths, fc7 in iter_parts("out/demo"): ...    # one part at a time

    out = Output("out/demo")                         # the manifest, read once
    out.read_part(3); out.part_paths(3); out.error_reasons(); out.open_features(3)

Only the parts the manifest lists are read, so files a killed run left behind are never seen.
An output on an object store is read the same way, by the exact objects its commits name.
Every reader of an output in this package goes through here: search, the index, resume, the
dry run. Light at import.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from typing import Iterator, List, Optional, Tuple

import numpy as np

from estimator_vgg.manifest import (ERRORS, FEATURES, MANIFEST, Manifest, ManifestError,
                                    PartRecord, damaged, part_name, read_manifest)
from estimator_vgg.parquet_layout import read_parquet_part, read_table
from estimator_vgg.recipe import FC7_DIM
from estimator_vgg.storage import Bucket, Folder, location

FEATURE_SUFFIXES = {"parquet": (".parquet",), "npy": (".npy", ".paths.jsonl"),
                    "csv": (".csv",)}  # a features part's files: the first holds the fc7


def read_jsonl(data: str) -> List[str]:
    # split("\n"), not splitlines(): a name may hold U+2028, which JSON leaves unescaped
    return [json.loads(line) for line in data.split("\n") if line]


COMMITS = "_commits/"    # on an object store: the numbered commit records (bucket_store.py)


SEGMENT = 256            # records also gathered, block by block, in one object each


def commit_name(seq: int) -> str:
    return f"{COMMITS}{seq:012d}.json"


def segment_name(block: int) -> str:
    """The object holding records block * SEGMENT .. (block + 1) * SEGMENT - 1, written once
    the block is complete, so a reader fetches a long run's records a block at a time."""
    return f"{COMMITS}block-{block:09d}.json"


def read_output_manifest(loc) -> Optional[Manifest]:
    """The manifest of an output: manifest.json, and on an object store the commit records
    after it, read by key (never through a listing) until the first that does not exist."""
    if not loc.remote:
        return read_manifest(loc.root)
    try:
        manifest = Manifest.from_dict(json.loads(loc.read(MANIFEST)))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{loc.url(MANIFEST)} is unreadable ({type(e).__name__}: {e})"
                            ) from None
    seq = manifest.commits if manifest.commits is not None else len(manifest.parts)
    for record in _records(loc, seq):
        manifest.parts.append(PartRecord.from_dict(record["part"]))
        seq += 1
    manifest.parts.sort(key=lambda p: p.index)
    manifest.commits = seq
    return manifest


def _records(loc, seq: int, window: int = 16) -> Iterator[dict]:
    """The commit records from `seq` on, read by key: whole blocks from their block objects
    where they exist, the rest one by one, `window` requests in flight at a time, until the
    first record that does not exist."""
    from concurrent.futures import ThreadPoolExecutor

    def get(name):
        try:
            return json.loads(loc.read(name))
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(window) as pool:
        while True:
            block = get(segment_name(seq // SEGMENT)) if seq % SEGMENT == 0 else None
            if block is not None:
                yield from block
                seq += len(block)
                continue
            # one by one, up to the next block's start
            names = map(commit_name, range(seq, seq + min(window, SEGMENT - seq % SEGMENT)))
            for record in pool.map(get, names):
                if record is None:
                    return
                yield record
                seq += 1


class Output:
    """The committed parts of an output, by their manifest: a local folder, or a prefix of an
    object store (storage.location: `where` may be a path, a URI or a location)."""

    def __init__(self, where, manifest: Optional[Manifest] = None, output_cfg=None):
        self.loc = where if isinstance(where, (Folder, Bucket)) else location(where, output_cfg)
        self.dir = self.loc.root if not self.loc.remote else self.loc.uri
        self.manifest = manifest if manifest is not None else read_output_manifest(self.loc)
        if self.manifest is None:
            raise FileNotFoundError(f"{self.loc} has no {MANIFEST}: not an estimator-vgg "
                                    f"output, or nothing was written yet")
        self._by_index = {p.index: p for p in self.manifest.parts}

    @property
    def fmt(self) -> str:
        return self.manifest.output_format

    @property
    def parts(self) -> List[PartRecord]:
        return self.manifest.parts

    # -- files
    def part_files(self, index: int) -> List[str]:
        """The names of part `index`'s files: its features file(s) (the fc7 first), then its
        errors file."""
        p = self._by_index.get(index)
        if p is not None and p.objects:
            return [r["key"] for r in p.objects["features"]] + [p.objects["errors"]["key"]]
        name = part_name(index)
        return ([f"{FEATURES}/{name}{s}" for s in FEATURE_SUFFIXES[self.fmt]]
                + [f"{ERRORS}/{name}.parquet"])

    def open_features(self, index: int):
        """Part `index`'s features file, open for reading bytes (seekable)."""
        return self._open(self.part_files(index)[0], index)

    def damaged(self, index: int):
        """The OutputError for a listed part whose file is gone."""
        missing = [f for f in self.part_files(index) if not self.loc.exists(f)]
        where = (self.loc.path if not self.loc.remote else self.loc.url)(
            missing[0] if missing else self.part_files(index)[0])
        return damaged(self.dir, part_name(index), where)

    def _open(self, name: str, index: int):
        try:
            return self.loc.open(name)
        except FileNotFoundError:
            raise self.damaged(index) from None

    @contextlib.contextmanager
    def _source(self, name: str, index: int):
        """What to read a file from: its path (local), or an open file (a store)."""
        if not self.loc.remote:
            yield self.loc.path(name)
            return
        with self._open(name, index) as f:
            yield f

    def _bytes(self, name: str, index: int) -> bytes:
        try:
            return self.loc.read(name)
        except FileNotFoundError:
            raise self.damaged(index) from None

    # -- rows
    def read_part(self, index: int, out: Optional[np.ndarray] = None
                  ) -> Tuple[List[str], np.ndarray]:
        """(paths, fc7) of the committed part `index`; fc7 into `out` when given (Parquet)."""
        files = self.part_files(index)
        try:
            with self._source(files[0], index) as f:
                if self.fmt == "parquet":
                    return read_parquet_part(f, out)
                if self.fmt == "npy":
                    return self._jsonl(files[1], index), np.load(f)
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
        files = self.part_files(index)
        if self.fmt == "npy":
            return self._jsonl(files[1], index)
        try:
            with self._source(files[0], index) as f:
                if self.fmt == "parquet":
                    return read_table(f, columns=["path"]).column("path").to_pylist()
                with (open(f, encoding="utf-8", newline="") if not self.loc.remote else
                      io.TextIOWrapper(f, encoding="utf-8", newline="")) as text:
                    reader = csv.reader(text)
                    next(reader)
                    return [row[0] for row in reader]
        except FileNotFoundError:
            raise self.damaged(index) from None

    def error_rows(self, index: int, columns=("path", "reason", "message")) -> dict:
        """Part `index`'s errors table as {column: list}."""
        try:
            with self._source(self.part_files(index)[-1], index) as f:
                table = read_table(f, columns=columns)
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

    def _jsonl(self, name: str, index: int) -> List[str]:
        return read_jsonl(self._bytes(name, index).decode("utf-8"))


def _on(out_dir, storage_options: Optional[dict]):
    if storage_options is None:
        return out_dir
    from types import SimpleNamespace
    return location(str(out_dir), SimpleNamespace(storage_options=storage_options))


def iter_parts(out_dir, skip: int = 0, storage_options: Optional[dict] = None
               ) -> Iterator[Tuple[List[str], np.ndarray]]:
    """(paths, fc7 float32 [n, 4096]) per features part, in row order, for any output format.

    One part in memory at a time: for outputs larger than memory. `skip` passes over the
    first parts without reading them. `out_dir` may be an s3:// or gs:// prefix, read with
    `storage_options` (endpoint_url, key, secret, ...; default: the library's own
    credentials).
    """
    return Output(_on(out_dir, storage_options)).iter_parts(skip)


def read_features(out_dir, storage_options: Optional[dict] = None
                  ) -> Tuple[List[str], np.ndarray]:
    """All rows of an output: (paths, fc7 float32 [n, 4096]), in the table's order.

    The matrix is allocated once from the manifest's row counts and filled part by part, so
    the peak memory is the matrix plus one part (no per-row Python loop, no final concatenate).
    `out_dir` may be an s3:// or gs:// prefix, read with `storage_options`.
    """
    return Output(_on(out_dir, storage_options)).read_features()
