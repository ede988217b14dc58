"""Rows of a Parquet features part in another layout than the fast one (the parts of earlier
releases: pyarrow's defaults, snappy pages of 1 MiB, a dictionary first), read by decoding
only the data pages that hold them.

    rows = read_rows(fh, [17, 903])   # fc7 [2, 4096] float32, or None: read the part whole

A search that re-scores a few candidates on an output written by an earlier release reads a
page (about 1 MiB) per row instead of the whole part (16 MiB and more) from a local folder
(on an object store the walk over the page headers reads most of the part's blocks). The page headers
(Thrift compact protocol) are walked from the column chunk's start; a data page v1 is
decompressed (pyarrow's codecs), its repetition and definition levels skipped (fc7 has no
nulls: 4096 values a row) and its values decoded, PLAIN or from the dictionary page
(RLE/bit-packed indices). Anything else (a data page v2, nulls or no null count, an unknown
encoding or codec) returns None, and the caller reads the part whole. Light at import.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.recipe import FC7_DIM

DATA_PAGE, DICTIONARY_PAGE = 0, 2
PLAIN, PLAIN_DICTIONARY, RLE_DICTIONARY = 0, 2, 8
CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd",
          "BROTLI": "brotli"}


class _Unreadable(Exception):
    """Not a page this module reads: the caller reads the part whole."""


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def page_header(buf: bytes) -> Optional[Tuple[dict, int]]:
    """The Thrift compact PageHeader at the start of `buf` as {field id: value} (PageHeader: 1
    type, 2 uncompressed size, 3 compressed size, 4 crc, 5 data page header {1 num_values,
    2 encoding, ...}, 7 dictionary page header {1 num_values, 2 encoding}), and its length;
    None when it does not parse."""
    try:
        return _struct(buf, 0)
    except (_Unreadable, IndexError):
        return None


def _struct(buf: bytes, pos: int) -> Tuple[dict, int]:
    """A Thrift compact struct at `pos`: {field id: value} (nested structs as dicts, other
    containers skipped) and the position after it."""
    fields: dict = {}
    fid = 0
    while True:
        b = buf[pos]
        pos += 1
        if b == 0:
            return fields, pos
        kind, delta = b & 0x0F, b >> 4
        if delta:
            fid += delta
        else:
            raw, pos = _varint(buf, pos)
            fid = (raw >> 1) ^ -(raw & 1)
        fields[fid], pos = _value(buf, pos, kind)


def _value(buf: bytes, pos: int, kind: int):
    if kind in (1, 2):                       # booleans: the value is the type
        return kind == 1, pos
    if kind == 3:                            # byte
        return buf[pos], pos + 1
    if kind in (4, 5, 6):                    # i16, i32, i64: zigzag varints
        raw, pos = _varint(buf, pos)
        return (raw >> 1) ^ -(raw & 1), pos
    if kind == 7:                            # double
        return None, pos + 8
    if kind == 8:                            # binary
        n, pos = _varint(buf, pos)
        return None, pos + n
    if kind == 12:
        return _struct(buf, pos)
    if kind in (9, 10):                      # list, set
        head = buf[pos]
        pos += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            _, pos = _value(buf, pos, elem)
        return None, pos
    raise _Unreadable(f"Thrift type {kind}")


def _hybrid(buf: bytes, width: int, count: int) -> np.ndarray:
    """`count` values of `width` bits in the RLE/bit-packed hybrid encoding."""
    out = np.zeros(count, np.int64)
    n = pos = 0
    nbytes = (width + 7) // 8
    weights = 1 << np.arange(width, dtype=np.int64)
    while n < count:
        header, pos = _varint(buf, pos)
        if header & 1:                       # (header >> 1) groups of 8 bit-packed values
            size = (header >> 1) * width
            bits = np.unpackbits(np.frombuffer(buf, np.uint8, size, pos), bitorder="little")
            values = bits.reshape(-1, width) @ weights if width else np.zeros(8 * (header >> 1))
            take = min(len(values), count - n)
            out[n:n + take] = values[:take]
            pos += size
        else:                                # a run of (header >> 1) copies of one value
            take = min(header >> 1, count - n)
            out[n:n + take] = int.from_bytes(buf[pos:pos + nbytes], "little")
            pos += nbytes
        n += take
    return out


class _Chunk:
    """The fc7 column chunk of one row group: its pages, decoded as they are asked for."""

    def __init__(self, fh, meta, max_rep: int, max_def: int):
        if meta.compression not in CODECS:
            raise _Unreadable(meta.compression)
        st = meta.statistics   # no nulls, or a row's 4096 values are not where counted
        if st is None or not st.has_null_count or st.null_count != 0:
            raise _Unreadable("nulls, or no null count")
        import pyarrow as pa
        self.fh, self.max_rep, self.max_def = fh, max_rep, max_def
        self.codec = pa.Codec(CODECS[meta.compression]) if CODECS[meta.compression] else None
        start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
        self.pages: List[Tuple[int, int, int, tuple]] = []  # first value, count, encoding, body
        self.dictionary: Optional[np.ndarray] = None
        self._decoded: Dict[int, np.ndarray] = {}
        self._walk(start, start + meta.total_compressed_size)

    def _walk(self, pos: int, end: int) -> None:
        first = 0
        while pos < end:
            self.fh.seek(pos)
            parsed = page_header(self.fh.read(1024))
            if parsed is None:
                raise _Unreadable("a page header")
            header, hlen = parsed
            kind, size, raw = header.get(1), header.get(3), header.get(2)
            body = (pos + hlen, size, raw)
            if kind == DICTIONARY_PAGE:
                d = header[7]
                if d.get(2) not in (PLAIN, PLAIN_DICTIONARY):
                    raise _Unreadable("dictionary encoding")
                self.dictionary = np.frombuffer(self._payload(body), "<f4", d[1])
            elif kind == DATA_PAGE:
                d = header[5]
                self.pages.append((first, d[1], d[2], body))
                first += d[1]
            else:
                raise _Unreadable(f"page type {kind}")
            pos += hlen + size

    def _payload(self, body) -> bytes:
        pos, size, raw = body
        self.fh.seek(pos)
        data = self.fh.read(size)
        return bytes(self.codec.decompress(data, decompressed_size=raw)) if self.codec else data

    def _page(self, k: int) -> np.ndarray:
        if k not in self._decoded:
            _, count, encoding, body = self.pages[k]
            data, off = self._payload(body), 0
            for present in (self.max_rep, self.max_def):   # v1: levels behind their length
                if present:
                    off += 4 + int.from_bytes(data[off:off + 4], "little")
            values = data[off:]
            if encoding == PLAIN and len(values) == 4 * count:
                self._decoded[k] = np.frombuffer(values, "<f4", count)
            elif encoding in (PLAIN_DICTIONARY, RLE_DICTIONARY) and self.dictionary is not None:
                self._decoded[k] = self.dictionary[_hybrid(values[1:], values[0], count)]
            else:
                raise _Unreadable(f"encoding {encoding}")
        return self._decoded[k]

    def values(self, first: int, n: int) -> np.ndarray:
        """Values first .. first + n - 1 of the chunk (over page boundaries)."""
        parts = []
        for k, (start, count, _, _) in enumerate(self.pages):
            lo, hi = max(first, start), min(first + n, start + count)
            if lo < hi:
                parts.append(self._page(k)[lo - start:hi - start])
        out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(out) != n:
            raise _Unreadable("values missing (nulls?)")
        return out


def read_rows(fh, rows: Sequence[int]) -> Optional[np.ndarray]:
    """The fc7 of `rows` (positions in the part) of the Parquet file open as `fh`, decoding
    only their pages; None when the file is not one this reads (read it whole)."""
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(fh).metadata
        names = [md.schema.column(i).path for i in range(md.num_columns)]
        col = names.index("fc7.list.element")
        leaf = md.schema.column(col)
        if leaf.physical_type != "FLOAT" or leaf.max_repetition_level != 1:
            return None
        starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        chunks: Dict[int, _Chunk] = {}
        out = np.empty((len(rows), FC7_DIM), np.float32)
        for i, r in enumerate(rows):
            g = int(np.searchsorted(starts, r, side="right") - 1)
            if g not in chunks:
                chunks[g] = _Chunk(fh, md.row_group(g).column(col), 1,
                                   leaf.max_definition_level)
            out[i] = chunks[g].values((r - int(starts[g])) * FC7_DIM, FC7_DIM)
        return out
    except (_Unreadable, ValueError, IndexError, KeyError, OSError):
        return None
