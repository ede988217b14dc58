"""Writing part files: fc7 rows under `<output.dir>/features/`, failed files under
`<output.dir>/errors/` (output.py reads them back).

Every file is written to a temporary name, flushed and renamed, so a part file on disk is
always whole. Part names are fixed (`part-00000`), never derived from input paths, so no input
can make the job write outside `output.dir`. Formats of a features part:
  parquet  part-00000.parquet        columns path (string), fc7 (4096 float32), in the fast
                                     layout of parquet_layout.py
  npy      part-00000.npy            float32 [rows, 4096]
           part-00000.paths.jsonl    one JSON string per line, row-aligned with the matrix
  csv      part-00000.csv            wide: path, vgg0 .. vgg4095 (float32 round-trip precision)
An errors part is always Parquet: columns path, reason, message. Light at import.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence, Tuple

import numpy as np

from estimator_vgg.manifest import ERRORS, FEATURES, part_name
from estimator_vgg.parquet_layout import write_fast_parquet
from estimator_vgg.recipe import FC7_DIM


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

        table = pa.table({
            "path": pa.array(list(paths), pa.string()),
            "fc7": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), FC7_DIM),
        })
        files = [(d / f"{name}.parquet", lambda f: write_fast_parquet(table, f))]
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
