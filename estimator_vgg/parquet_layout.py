"""The fast Parquet layout of features parts, and reading fc7 rows by their byte offset in it.

    write_fast_parquet(table, f)                  # writer.py: every new Parquet part
    read_parquet_part(f, out=None)                # (paths, fc7): fast when the layout is there
    read_table(f_or_bytes, columns=None)          # any Parquet file, read in the calling thread
    row_offsets(f, rows)                          # where each row's 4096 floats start (or -1)
    RowReader(open_part, read_part).rows(refs)    # rows of many parts, each part read once

FAST_LAYOUT: uncompressed, fc7 PLAIN encoded in one data page per row group, so the 4096 floats
of a row group's rows are the last rows * 16 KiB bytes of its fc7 column chunk. A reader
copies them straight into its matrix, and a searcher reads one row as 16 KiB at its offset,
after checking the file's metadata and the page header say exactly that. Any other Parquet
file (parts written by earlier releases, or by another writer) is read through pyarrow.

`f` is a path or an open binary file (seekable): a local part, or an object on a store. Light
at import (pyarrow is imported when a file is read).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.parquet_pages import page_header, read_rows
from estimator_vgg.recipe import FC7_DIM

# One row group holds at most this many rows, and its fc7 page is never cut: the page size
# limit is larger than the row group's fc7 values (64 MiB) plus their levels.
FAST_ROWS_PER_GROUP = 4096
_FAST_PAGE_BYTES = 256 << 20
FAST_LAYOUT = b"plain-fc7-single-page-v1"   # in the file's key-value metadata
ROW_BYTES = FC7_DIM * 4


def write_fast_parquet(table, f) -> None:
    """`table` (columns path, fc7) into the binary file `f`, in FAST_LAYOUT."""
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({b"estimator_vgg.layout": FAST_LAYOUT})
    pq.write_table(table, f, compression="none", use_dictionary=["path"],
                   data_page_size=_FAST_PAGE_BYTES, row_group_size=FAST_ROWS_PER_GROUP,
                   data_page_version="1.0")


def read_table(source, columns: Optional[Sequence[str]] = None):
    """The pyarrow Table of a Parquet file given as a path, an open binary file or its bytes,
    read whole in the calling thread (pq.ParquetFile, use_threads=False). Memory or a file
    that Python owns is released by whichever thread drops pyarrow's last reference to it,
    and that thread must take the GIL; a pyarrow thread doing so while the interpreter exits
    aborts the process ("terminate called without an active exception", exit 134 instead of
    the job's own code). pq.read_table hands the file to the dataset scanner's I/O threads,
    and a threaded read to its decoding threads: either may hold that last reference after
    the call returned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    with pq.ParquetFile(source) as pf:
        return pf.read(columns=None if columns is None else list(columns), use_threads=False)


@contextlib.contextmanager
def _opened(f):
    """`f` itself when it is an open file, else the file at path `f`, unbuffered."""
    if hasattr(f, "read"):
        yield f
    else:
        with open(f, "rb", buffering=0) as fh:
            yield fh


def _native(f, fh):
    """What pyarrow reads best: a path by its own file reader, an open file as it is."""
    return fh if hasattr(f, "read") else str(f)


def _page_values(header: bytes) -> Optional[Tuple[int, int]]:
    """(type, num_values) of the page header at the start of `header` when it is a data page
    v1 (the only layout FAST_LAYOUT writes), else None."""
    parsed = page_header(header)
    if parsed is None or 5 not in parsed[0] or not isinstance(parsed[0][5], dict):
        return None
    return parsed[0].get(1), parsed[0][5].get(1)


def _fc7_chunk_ok(c, rows: int) -> bool:
    """Whether a row group's fc7 column chunk metadata is FAST_LAYOUT's."""
    return (c.compression == "UNCOMPRESSED" and not c.has_dictionary_page
            and set(c.encodings) <= {"PLAIN", "RLE"} and c.num_values == rows * FC7_DIM
            and c.total_compressed_size >= rows * ROW_BYTES and c.statistics is not None
            and c.statistics.has_null_count and c.statistics.null_count == 0)


def fast_row_groups(f, pf=None) -> Optional[List[Tuple[int, int]]]:
    """[(rows, byte offset of the group's first fc7 value)] of a FAST_LAYOUT file: row r of a
    group is the 16 KiB at offset + r * 16384. None when the file is not in that layout (its
    metadata or a page header say otherwise)."""
    import pyarrow.parquet as pq

    with _opened(f) as fh:
        pf = pf or pq.ParquetFile(_native(f, fh))
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
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            c, rows = rg.column(col), rg.num_rows
            if rows == 0:
                continue
            if not _fc7_chunk_ok(c, rows):
                return None
            fh.seek(c.data_page_offset)
            if _page_values(fh.read(64)) != (0, rows * FC7_DIM):  # one DATA_PAGE, every value
                return None
            groups.append((rows, c.data_page_offset + c.total_compressed_size - rows * ROW_BYTES))
    return groups


def row_offsets(f, rows: int) -> np.ndarray:
    """Where each of the `rows` rows' fc7 starts in the part `f`, or -1s when it is not in
    FAST_LAYOUT."""
    groups = fast_row_groups(f)
    if groups is None or sum(n for n, _ in groups) != rows:
        return np.full(rows, -1, np.int64)
    return np.concatenate([off + ROW_BYTES * np.arange(n, dtype=np.int64)
                           for n, off in groups]) if groups else np.zeros(0, np.int64)


def _readinto(fh, view) -> int:
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_fc7_fast(fh, pf, out: np.ndarray) -> bool:
    """Fill `out` (rows x 4096 float32) with the fc7 of a FAST_LAYOUT file, reading the values'
    bytes straight from the file; False (out untouched or partly filled) when the file is not
    in that layout, so the caller reads it through pyarrow instead."""
    if pf.metadata.num_rows != len(out):
        return False
    groups = fast_row_groups(fh, pf)
    if groups is None:
        return False
    start = 0
    for rows, offset in groups:
        fh.seek(offset)
        if _readinto(fh, memoryview(out[start:start + rows]).cast("B")) != rows * ROW_BYTES:
            return False
        start += rows
    return start == len(out)


def read_parquet_part(f, out: Optional[np.ndarray] = None) -> Tuple[List[str], np.ndarray]:
    """(paths, fc7) of one Parquet features part; fc7 written into `out` when given (rows x
    4096 float32, e.g. a slice of read_features' matrix), so nothing is copied twice."""
    import pyarrow.parquet as pq

    with _opened(f) as fh:
        pf = pq.ParquetFile(_native(f, fh))
        n = pf.metadata.num_rows
        if out is None:
            out = np.empty((n, FC7_DIM), np.float32)
        elif out.shape != (n, FC7_DIM) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"{f} has {n} rows; the matrix to fill is {out.shape} {out.dtype}")
        threads = not hasattr(f, "read")   # a Python file: in this thread (read_table says why)
        paths = pf.read(columns=["path"], use_threads=threads).column("path").to_pylist()
        if not _read_fc7_fast(fh, pf, out):
            start = 0
            for chunk in pf.read(columns=["fc7"], use_threads=threads).column("fc7").chunks:
                m = chunk.flatten().to_numpy().reshape(-1, FC7_DIM)
                out[start:start + len(m)] = m
                start += len(m)
    return paths, out


class RowReader:
    """fc7 rows of an output's parts, by (part index, row in the part) and, where known, the
    row's byte offset in its part (row_offsets): 16 KiB at the offset for parts in
    FAST_LAYOUT; for other layouts the pages that hold the rows (parquet_pages.py), or the
    whole part where its pages cannot be read. One call reads each part at most once.

    open_part(index) -> an open binary file of the part's features file (closed after use);
    read_part(index) -> its fc7 matrix (any format)."""

    def __init__(self, open_part: Callable[[int], object],
                 read_part: Callable[[int], np.ndarray]):
        self.open_part, self.read_part = open_part, read_part

    def rows(self, parts: Sequence[int], positions: Sequence[int],
             offsets: Optional[Sequence[int]] = None) -> np.ndarray:
        """The fc7 rows [n, 4096] at (parts[i], positions[i]); offsets[i] >= 0 reads the 16 KiB
        there (the part must be in FAST_LAYOUT), -1 (or no offsets) reads the part whole."""
        out = np.empty((len(parts), FC7_DIM), np.float32)
        by_part: Dict[int, List[int]] = {}
        for i, p in enumerate(parts):
            by_part.setdefault(int(p), []).append(i)
        for index, rows in by_part.items():
            at = [int(offsets[i]) if offsets is not None else -1 for i in rows]
            if min(at) >= 0:
                with contextlib.closing(self.open_part(index)) as fh:
                    for i, off in sorted(zip(rows, at), key=lambda r: r[1]):
                        fh.seek(off)
                        if _readinto(fh, memoryview(out[i]).cast("B")) != ROW_BYTES:
                            raise OSError(f"part {index} is shorter than its row offsets say")
            else:   # another layout: the pages that hold the rows, or the whole part
                where = np.asarray(positions, np.int64)[rows]
                with contextlib.closing(self.open_part(index)) as fh:
                    got = read_rows(fh, where.tolist())
                out[rows] = got if got is not None else self.read_part(index)[where]
        return out
