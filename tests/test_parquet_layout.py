"""Features parts are written for fast reads and read back bit for bit; parts in the layout of
earlier releases (pyarrow's defaults: snappy, many pages) and other Parquet files still read."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from estimator_vgg.storage import Folder


def _matrix(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, 4096), dtype=np.float32) - 0.3, 0)


@pytest.mark.parametrize("rows", [0, 1, 4096, 4097, 9000])
def test_new_parts_read_through_the_fast_path_bit_for_bit(tmp_path, rows):
    import pandas as pd

    from estimator_vgg import parquet_layout, writer

    m = _matrix(rows)
    paths = [f"d/{i}.jpg" for i in range(rows)]
    writer.write_part(Folder(tmp_path), "parquet", 0, paths, m, [])
    f = tmp_path / "features" / "part-00000.parquet"
    pf = pq.ParquetFile(f)
    out = np.full((rows, 4096), np.nan, np.float32)
    with open(f, "rb", buffering=0) as fh:
        assert parquet_layout._read_fc7_fast(fh, pf, out)
    assert np.array_equal(out, m)
    got_paths, got = parquet_layout.read_parquet_part(f)
    assert got_paths == paths and np.array_equal(got, m)
    df = pd.read_parquet(tmp_path / "features")  # still a plain table with path and fc7
    assert df.columns.tolist() == ["path", "fc7"] and df["path"].tolist() == paths
    if rows:
        assert np.array_equal(np.stack(df["fc7"].to_numpy()), m)


@pytest.mark.parametrize("layout", ["earlier_release", "several_pages", "dictionary", "gzip"])
def test_parts_in_other_layouts_fall_back_to_pyarrow(tmp_path, layout):
    from estimator_vgg import parquet_layout

    m = _matrix(1200, seed=1)
    paths = [f"{i}.png" for i in range(1200)]
    table = pa.table({"path": pa.array(paths),
                      "fc7": pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), 4096)})
    f = tmp_path / "part-00000.parquet"
    kw = {"earlier_release": {},  # what writer.py wrote before (pyarrow's defaults)
          "several_pages": dict(compression="none", use_dictionary=["path"],
                                data_page_size=1 << 20, row_group_size=500),
          "dictionary": dict(compression="none", row_group_size=500),
          "gzip": dict(compression="gzip", use_dictionary=["path"], data_page_size=256 << 20,
                       row_group_size=500)}[layout]
    # the marker claims the fast layout: only the checks of the file itself can refuse it
    if layout != "earlier_release":
        table = table.replace_schema_metadata(
            {b"estimator_vgg.layout": parquet_layout.FAST_LAYOUT})
    pq.write_table(table, f, **kw)
    with open(f, "rb", buffering=0) as fh:
        assert not parquet_layout._read_fc7_fast(fh, pq.ParquetFile(f),
                                                 np.empty((1200, 4096), np.float32))
    assert (parquet_layout.row_offsets(f, 1200) == -1).all()
    got_paths, got = parquet_layout.read_parquet_part(f)
    assert got_paths == paths and np.array_equal(got, m)
    # a few rows, decoding only the pages that hold them (first rows: dictionary-encoded)
    from estimator_vgg.parquet_pages import read_rows
    rows = [0, 1, 63, 64, 499, 500, 777, 1199]
    with open(f, "rb", buffering=0) as fh:
        assert np.array_equal(read_rows(fh, rows), m[rows])


def test_read_features_mixes_earlier_and_new_parts(tmp_path):
    """An output resumed by this release after an earlier one holds parts of both layouts."""
    from estimator_vgg import read_features, writer
    from estimator_vgg.manifest import Fingerprint, Preprocessing
    from estimator_vgg.store import Store

    fp = Fingerprint("vgg16/fc7", "float32", "0" * 64, True,
                     Preprocessing("r", "center_crop", True, 224, [1.0, 2.0, 3.0]),
                     "parquet", str(tmp_path))
    store = Store(tmp_path / "out", "parquet")
    store.open(fp, {"input": {"dir": str(tmp_path)}}, overwrite=False)
    a, b = _matrix(10, 2), _matrix(7, 3)
    table = pa.table({"path": pa.array([f"a{i}" for i in range(10)]),
                      "fc7": pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 4096)})
    (tmp_path / "out" / "features").mkdir()
    writer.commit_file(tmp_path / "out" / "features" / "part-00000.parquet",
                       lambda f: pq.write_table(table, f))
    Folder(tmp_path / "out").write("errors/part-00000.parquet", writer.errors_file([]))
    store.record(0, 10, 0)
    store.commit(1, [f"b{i}" for i in range(7)], b, [])
    paths, m = read_features(tmp_path / "out")
    assert paths == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(7)]
    assert np.array_equal(m, np.concatenate([a, b]))


def test_rows_by_offset_are_the_rows_and_each_part_is_read_once(tmp_path):
    """RowReader reads a fast-layout row as its 16 KiB and the rows of a part of another
    layout from the pages that hold them, each part opened once per call however many of its
    rows are asked for, in any order."""
    from estimator_vgg import parquet_layout, writer
    from estimator_vgg.parquet_layout import RowReader, row_offsets

    fast, other = _matrix(5000, 4), _matrix(300, 5)
    writer.write_part(Folder(tmp_path), "parquet", 0, [f"f{i}" for i in range(5000)], fast, [])
    old = tmp_path / "features" / "part-00001.parquet"
    pq.write_table(pa.table({"path": pa.array([f"o{i}" for i in range(300)]), "fc7":
                             pa.FixedSizeListArray.from_arrays(pa.array(other.reshape(-1)),
                                                               4096)}), old)
    files = {0: tmp_path / "features" / "part-00000.parquet", 1: old}
    offsets = {k: row_offsets(f, n) for (k, f), n in zip(files.items(), (5000, 300))}
    assert (offsets[0] >= 0).all() and (offsets[1] == -1).all()
    opened, read = [], []

    def open_part(k):
        opened.append(k)
        return open(files[k], "rb", buffering=0)

    def read_part(k):
        read.append(k)
        return parquet_layout.read_parquet_part(files[k])[1]

    parts = [1, 0, 1, 0, 0, 1]
    rows = [299, 4097, 0, 4095, 3, 7]
    got = RowReader(open_part, read_part).rows(parts, rows,
                                               [offsets[p][r] for p, r in zip(parts, rows)])
    want = np.stack([(fast if p == 0 else other)[r] for p, r in zip(parts, rows)])
    assert np.array_equal(got, want)
    assert sorted(opened) == [0, 1] and read == []   # the old part by its pages, not whole
