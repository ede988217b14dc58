"""Part files: fc7 rows under `<output.dir>/features/`, failed files under `<output.dir>/errors/`.

Every file is written to a temporary name, flushed and renamed, so a part file on disk is
always whole. Part names are fixed (`part-00000`), never derived from input paths, so no input
can make the job write outside `output.dir`. Formats of a features part:
  parquet  part-00000.parquet        columns path (string), fc7 (4096 float32)
  npy      part-00000.npy            float32 [rows, 4096]
           part-00000.paths.jsonl    one JSON string per line, row-aligned with the matrix
  csv      part-00000.csv            wide: path, vgg0 .. vgg4095 (float32 round-trip precision)
An errors part is always Parquet: columns path, reason, message.

Parquet features parts are written for fast reads (FAST_LAYOUT): uncompressed, fc7 PLAIN
encoded in one data page per row group, so the 4096 floats of a row group's rows are the last
rows * 16 KiB bytes of its fc7 column chunk, and _read_fc7_fast copies them straight into the
matrix (after checking the file's metadata and the page header say exactly that). Any other
Parquet file (outputs written before, or by another writer) is read through pyarrow.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

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

        table = pa.table({
            "path": pa.array(list(paths), pa.string()),
            "fc7": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), FC7_DIM),
        })
        files = [(d / f"{name}.parquet", lambda f: _write_fast_parquet(table, f))]
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


# One row group holds at most this many rows, and its fc7 page is never cut: the page size
# limit is larger than the row group's fc7 values (64 MiB) plus their levels.
FAST_ROWS_PER_GROUP = 4096
_FAST_PAGE_BYTES = 256 << 20
FAST_LAYOUT = b"plain-fc7-single-page-v1"   # in the file's key-value metadata


def _write_fast_parquet(table, f) -> None:
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({b"estimator_vgg.layout": FAST_LAYOUT})
    pq.write_table(table, f, compression="none", use_dictionary=["path"],
                   data_page_size=_FAST_PAGE_BYTES, row_group_size=FAST_ROWS_PER_GROUP,
                   data_page_version="1.0")


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


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _page_values(header: bytes) -> Optional[Tuple[int, int]]:
    """(type, num_values) of the Thrift compact PageHeader at the start of `header`, for a data
    page v1 (the only layout FAST_LAYOUT writes), or None when it does not parse as one.

    PageHeader: 1 type i32, 2 uncompressed_page_size i32, 3 compressed_page_size i32, 4 crc
    i32 (optional), 5 data_page_header {1 num_values i32, ...}; i32 is a zigzag varint.
    """
    pos, field, found = 0, 0, {}
    try:
        while True:
            b = header[pos]
            pos += 1
            kind, delta = b & 0x0F, b >> 4
            if b == 0 or delta == 0:
                return None
            field += delta
            if kind == 5 and field in (1, 2, 3, 4):          # i32
                raw, pos = _varint(header, pos)
                found[field] = (raw >> 1) ^ -(raw & 1)
            elif kind == 12 and field == 5:                # struct: DataPageHeader
                b = header[pos]
                if b & 0x0F != 5 or b >> 4 != 1:
                    return None
                raw, pos = _varint(header, pos + 1)
                return found.get(1), (raw >> 1) ^ -(raw & 1)
            else:
                return None
    except IndexError:
        return None


def fast_row_groups(f: Path, pf=None) -> Optional[List[Tuple[int, int]]]:
    """[(rows, byte offset of the group's first fc7 value)] of a FAST_LAYOUT file: row r of a
    group is the 16 KiB at offset + r * 16384. None when the file is not in that layout (its
    metadata or a page header say otherwise)."""
    import pyarrow.parquet as pq

    pf = pf or pq.ParquetFile(f)
    md = pf.metadata
    if (pf.schema_arrow.metadata or {}).get(b"estimator_vgg.layout") != FAST_LAYOUT:
        return None
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    if "fc7.list.element" not in names:
        return None
    col = names.index("fc7.list.element")
    if md.schema.column(col).physical_type != "FLOAT":
        return None
    groups = []
    with open(f, "rb", buffering=0) as fh:
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            c = rg.column(col)
            rows = rg.num_rows
            if rows == 0:
                continue
            nbytes = rows * FC7_DIM * 4
            if (c.compression != "UNCOMPRESSED" or c.has_dictionary_page
                    or not set(c.encodings) <= {"PLAIN", "RLE"}
                    or c.num_values != rows * FC7_DIM or c.total_compressed_size < nbytes
                    or c.statistics is None or not c.statistics.has_null_count
                    or c.statistics.null_count != 0):
                return None
            fh.seek(c.data_page_offset)
            page = _page_values(fh.read(64))
            if page is None or page != (0, rows * FC7_DIM):  # one DATA_PAGE with every value
                return None
            groups.append((rows, c.data_page_offset + c.total_compressed_size - nbytes))
    return groups


def _read_fc7_fast(f: Path, pf, out: np.ndarray) -> bool:
    """Fill `out` (rows x 4096 float32) with the fc7 of a FAST_LAYOUT file, reading the values'
    bytes straight from disk; False (out untouched or partly filled) when the file is not in
    that layout, so the caller reads it through pyarrow instead."""
    if pf.metadata.num_rows != len(out):
        return False
    groups = fast_row_groups(f, pf)
    if groups is None:
        return False
    start = 0
    with open(f, "rb", buffering=0) as fh:
        for rows, offset in groups:
            nbytes = rows * FC7_DIM * 4
            fh.seek(offset)
            view = memoryview(out[start:start + rows]).cast("B")
            got = 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    return False
                got += n
            start += rows
    return start == len(out)


def read_parquet_part(f: Path, out: Optional[np.ndarray] = None
                      ) -> Tuple[List[str], np.ndarray]:
    """(paths, fc7) of one Parquet features part; fc7 written into `out` when given (rows x
    4096 float32, e.g. a slice of read_features' matrix), so nothing is copied twice."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    n = pf.metadata.num_rows
    if out is None:
        out = np.empty((n, FC7_DIM), np.float32)
    elif out.shape != (n, FC7_DIM) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"{f} has {n} rows; the matrix to fill is {out.shape} {out.dtype}")
    paths = pf.read(columns=["path"]).column("path").to_pylist()
    if not _read_fc7_fast(f, pf, out):
        start = 0
        for chunk in pf.read(columns=["fc7"]).column("fc7").chunks:  # no combine_chunks copy
            m = chunk.flatten().to_numpy().reshape(-1, FC7_DIM)
            out[start:start + len(m)] = m
            start += len(m)
    return paths, out


def _read_part(fmt: str, f: Path, out: Optional[np.ndarray] = None
               ) -> Tuple[List[str], np.ndarray]:
    if fmt == "parquet":
        return read_parquet_part(f, out)
    if fmt == "npy":
        return _read_jsonl(f.with_name(f.name[:-len(".npy")] + ".paths.jsonl")), np.load(f)
    import pandas as pd
    df = pd.read_csv(f, dtype={"path": str}, keep_default_na=False)
    return df["path"].tolist(), df.iloc[:, 1:].to_numpy(np.float32)


def _read_existing_part(out_dir: Path, fmt: str, f: Path, out: Optional[np.ndarray] = None
                        ) -> Tuple[List[str], np.ndarray]:
    try:
        return _read_part(fmt, f, out)
    except FileNotFoundError:
        raise _damaged(Path(out_dir), fmt, f.name.split(".")[0]) from None


def read_part(out_dir: Path, fmt: str, index: int) -> Tuple[List[str], np.ndarray]:
    """(paths, fc7) of the committed part `index`."""
    f = Path(out_dir) / FEATURES / f"{part_name(index)}{_EXT[fmt]}"
    return _read_existing_part(Path(out_dir), fmt, f)


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
        rows = matrix[len(paths):len(paths) + n]
        ps, m = _read_existing_part(out_dir, fmt, f, rows if fmt == "parquet" else None)
        if m is not rows:
            rows[...] = m
        paths.extend(ps)
    return paths, matrix
