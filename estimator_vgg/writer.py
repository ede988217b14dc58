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
import errno
import io
import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.manifest import ERRORS, FEATURES, part_name
from estimator_vgg.parquet_layout import write_fast_parquet
from estimator_vgg.recipe import FC7_DIM


def commit_file(final: Path, write: Callable, before_rename: Callable = lambda: None) -> None:
    """write(f) into a temporary file, flush it to disk, then rename it over `final` (atomic).

    The temporary name is unique to the process, so two writers of the same part (a shard Ray
    retried while the first attempt's worker was still dying) never write into one file. A
    write that fails (a full disk) leaves no half-written file behind, and says which file.
    """
    tmp = final.with_name(f"{final.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(e.errno, f"no space left on the device of {final}: free some space "
                                   f"there") from None
        raise
    before_rename()
    os.replace(tmp, final)


def features_files(fmt: str, paths: Sequence[str], matrix: np.ndarray
                   ) -> List[Tuple[str, Callable]]:
    """(suffix, write) of each file of a features part, in the order they are written (npy:
    the path index first, then the matrix); write(f) puts the file's bytes into f."""
    matrix = np.asarray(matrix, np.float32).reshape(len(paths), FC7_DIM)
    if fmt == "parquet":
        import pyarrow as pa

        table = pa.table({
            "path": pa.array(list(paths), pa.string()),
            "fc7": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), FC7_DIM),
        })
        return [(".parquet", lambda f: write_fast_parquet(table, f))]
    if fmt == "npy":
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in paths).encode()
        return [(".paths.jsonl", lambda f: f.write(lines)), (".npy", lambda f: np.save(f, matrix))]
    if fmt == "csv":
        def write_csv(f):
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            w = csv.writer(text)
            w.writerow(["path"] + [f"vgg{i}" for i in range(FC7_DIM)])
            for p, row in zip(paths, matrix):
                w.writerow([p] + ["%.9g" % v for v in row.tolist()])  # %.9g: exact float32
            text.flush()
            text.detach()
        return [(".csv", write_csv)]
    raise ValueError(f"unknown output format {fmt!r}")


def errors_file(rows: Sequence[Tuple[str, str, str]]) -> Callable:
    """write(f) of an errors part (possibly empty, so `read_parquet(<dir>/errors)` always
    works)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"path": pa.array([r[0] for r in rows], pa.string()),
                      "reason": pa.array([r[1] for r in rows], pa.string()),
                      "message": pa.array([r[2] for r in rows], pa.string())})
    return lambda f: pq.write_table(table, f)


def write_part(loc, fmt: str, index: int, paths: Sequence[str], fc7: Optional[np.ndarray],
               errors: Sequence[Tuple[str, str, str]], token: Optional[str] = None) -> dict:
    """Write the files of part `index` (features, then errors) into `loc` (a storage Folder
    or Bucket), each whole; the part is not done until its commit lists it. `token` (on an
    object store: the run and the attempt) goes into the names, so two attempts at one part
    never write the same object. Returns the objects written: {"features": [refs, the fc7
    file first], "errors": ref}.

    Paths are written in their display form (listing.display_path): the tables hold UTF-8.
    """
    from estimator_vgg.faults import fault
    from estimator_vgg.listing import display_path

    name = part_name(index) + (f".{token}" if token else "")
    matrix = fc7 if fc7 is not None else np.zeros((0, FC7_DIM), np.float32)
    refs = [loc.write(f"{FEATURES}/{name}{suffix}", write,
                      before_rename=lambda: fault("features_tmp"))
            for suffix, write in features_files(fmt, [display_path(p) for p in paths], matrix)]
    error_ref = loc.write(f"{ERRORS}/{name}.parquet",
                          errors_file([(display_path(p), r, m) for p, r, m in errors]))
    fault("part_files")
    return {"features": [r.to_dict() for r in reversed(refs)] if fmt == "npy" else
            [r.to_dict() for r in refs], "errors": error_ref.to_dict()}
