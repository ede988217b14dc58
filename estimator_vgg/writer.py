"""Part files: fc7 rows under `<output.dir>/features/`, failed files under `<output.dir>/errors/`.

Every file is written to a temporary name, flushed and renamed, so a part file on disk is
always whole. Part names are fixed (`part-00000`), never derived from input paths, so no input
can make the job write outside `output.dir`. Formats of a features part:
  parquet  part-00000.parquet        columns path (string), fc7 (4096 float32)
  npy      part-00000.npy            float32 [rows, 4096]
           part-00000.paths.jsonl    one JSON string per line, row-aligned with the matrix
  csv      part-00000.csv            wide: path, vgg0 .. vgg4095 (float32 round-trip precision)
An errors part is always Parquet: columns path, reason, message.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Set, Tuple

import numpy as np

from estimator_vgg.manifest import (ERRORS, FEATURES, MANIFEST, Manifest, damaged, part_name,
                                    read_manifest)
from estimator_vgg.recipe import FC7_DIM

_EXT = {"parquet": ".parquet", "npy": ".npy", "csv": ".csv"}


def commit_file(final: Path, write: Callable, before_rename: Callable = lambda: None) -> None:
    """write(f) into a temporary file, flush it to disk, then rename it over `final` (atomic).

    The temporary name is unique to the process, so two writers of the same part (a shard Ray
    retried while the first attempt's worker was still dying) never write into one file.
    """
    tmp = final.with_name(f"{final.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    before_rename()
    os.replace(tmp, final)


def write_features(out_dir: Path, fmt: str, index: int, paths: Sequence[str],
                   matrix: np.ndarray, before_rename: Callable = lambda: None) -> None:
    """Write one features part (for npy, the path index first, then the matrix)."""
    d = Path(out_dir) / FEATURES
    d.mkdir(parents=True, exist_ok=True)
    name = part_name(index)
    matrix = np.asarray(matrix, np.float32).reshape(len(paths), FC7_DIM)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "path": pa.array(list(paths), pa.string()),
            "fc7": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), FC7_DIM),
        })
        files = [(d / f"{name}.parquet", lambda f: pq.write_table(table, f))]
    elif fmt == "npy":
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in paths).encode()
        files = [(d / f"{name}.paths.jsonl", lambda f: f.write(lines)),
                 (d / f"{name}.npy", lambda f: np.save(f, matrix))]
    elif fmt == "csv":
        def write_csv(f):
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            w = csv.writer(text)
            w.writerow(["path"] + [f"vgg{i}" for i in range(FC7_DIM)])
            for p, row in zip(paths, matrix):
                w.writerow([p] + ["%.9g" % v for v in row.tolist()])  # %.9g: exact float32
            text.flush()
            text.detach()
        files = [(d / f"{name}.csv", write_csv)]
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    for final, write in files:
        commit_file(final, write, before_rename)


def write_errors(out_dir: Path, index: int, rows: Sequence[Tuple[str, str, str]]) -> None:
    """Write one errors part (possibly empty, so `read_parquet(<dir>/errors)` always works)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(out_dir) / ERRORS
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({"path": pa.array([r[0] for r in rows], pa.string()),
                      "reason": pa.array([r[1] for r in rows], pa.string()),
                      "message": pa.array([r[2] for r in rows], pa.string())})
    commit_file(d / f"{part_name(index)}.parquet", lambda f: pq.write_table(table, f))


def _read_jsonl(f: Path) -> List[str]:
    # split("\n"), not splitlines(): a name may hold U+2028, which JSON leaves unescaped
    return [json.loads(line) for line in f.read_text(encoding="utf-8").split("\n") if line]


def committed_paths(out_dir: Path, manifest: Manifest) -> Set[str]:
    """Every path in the committed parts, features and errors alike."""
    fmt = manifest.output_format
    return {p for part in manifest.parts for p in read_part_paths(out_dir, fmt, part.index)}


def read_part_paths(out_dir: Path, fmt: str, index: int) -> List[str]:
    """The paths of one committed part: its feature rows, then its error rows."""
    try:
        return _read_part_paths(Path(out_dir), fmt, part_name(index))
    except FileNotFoundError:
        raise _damaged(Path(out_dir), fmt, part_name(index)) from None


def part_files(out_dir: Path, fmt: str, name: str) -> List[Path]:
    """Every file of a committed part: its features file(s), then its errors file."""
    d = Path(out_dir)
    features = [d / FEATURES / f"{name}{_EXT[fmt]}"]
    if fmt == "npy":
        features.append(d / FEATURES / f"{name}.paths.jsonl")
    return features + [d / ERRORS / f"{name}.parquet"]


def _damaged(out_dir: Path, fmt: str, name: str):
    missing = [f for f in part_files(out_dir, fmt, name) if not f.is_file()]
    return damaged(out_dir, name, missing[0] if missing else out_dir / FEATURES / name)


def _read_part_paths(d: Path, fmt: str, name: str) -> List[str]:
    import pyarrow.parquet as pq

    if fmt == "parquet":
        paths = pq.read_table(d / FEATURES / f"{name}.parquet", columns=["path"])
        paths = paths.column("path").to_pylist()
    elif fmt == "npy":
        paths = _read_jsonl(d / FEATURES / f"{name}.paths.jsonl")
    else:
        with open(d / FEATURES / f"{name}.csv", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader)
            paths = [row[0] for row in reader]
    errors = pq.read_table(d / ERRORS / f"{name}.parquet", columns=["path"])
    return paths + errors.column("path").to_pylist()


def _committed_parts(out_dir: Path) -> Tuple[str, List[Tuple[Path, int]]]:
    """(format, [(features file, rows)]) of the parts the manifest lists, in order; files a
    killed run left behind are not listed, so readers never see them."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{out_dir} has no {MANIFEST}: not an estimator-vgg output, or "
                                f"nothing was written yet")
    fmt = manifest.output_format
    d = Path(out_dir) / FEATURES
    return fmt, [(d / f"{p.name}{_EXT[fmt]}", p.features) for p in manifest.parts]


def _read_part(fmt: str, f: Path) -> Tuple[List[str], np.ndarray]:
    if fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(f)
        fc7 = t.column("fc7").combine_chunks().flatten().to_numpy().reshape(-1, FC7_DIM)
        return t.column("path").to_pylist(), fc7.astype(np.float32, copy=False)
    if fmt == "npy":
        return _read_jsonl(f.with_name(f.name[:-len(".npy")] + ".paths.jsonl")), np.load(f)
    import pandas as pd
    df = pd.read_csv(f, dtype={"path": str}, keep_default_na=False)
    return df["path"].tolist(), df.iloc[:, 1:].to_numpy(np.float32)


def _read_existing_part(out_dir: Path, fmt: str, f: Path) -> Tuple[List[str], np.ndarray]:
    try:
        return _read_part(fmt, f)
    except FileNotFoundError:
        raise _damaged(Path(out_dir), fmt, f.name.split(".")[0]) from None


def iter_parts(out_dir: Path, skip: int = 0) -> Iterator[Tuple[List[str], np.ndarray]]:
    """(paths, fc7 float32 [n, 4096]) per features part, in row order, for any output format.

    One part in memory at a time: for outputs larger than memory. `skip` passes over the
    first parts without reading them.
    """
    fmt, parts = _committed_parts(out_dir)
    for f, _ in parts[skip:]:
        yield _read_existing_part(out_dir, fmt, f)


def read_features(out_dir: Path) -> Tuple[List[str], np.ndarray]:
    """All rows of an output: (paths, fc7 float32 [n, 4096]), in the table's order.

    The matrix is allocated once from the manifest's row counts and filled part by part, so
    the peak memory is the matrix plus one part (no per-row Python loop, no final concatenate).
    """
    fmt, parts = _committed_parts(out_dir)
    matrix = np.empty((sum(n for _, n in parts), FC7_DIM), np.float32)
    paths: List[str] = []
    for f, n in parts:
        ps, m = _read_existing_part(out_dir, fmt, f)
        matrix[len(paths):len(paths) + n] = m
        paths.extend(ps)
    return paths, matrix
