"""The output sink: fc7 rows streamed into part files under `<output.dir>/features/`.

Rows are buffered up to `rows_per_part`, then written to a temporary name and renamed, so a
part file on disk is always whole. Formats:
  parquet  part-00000.parquet        columns path (string), fc7 (4096 float32)
  npy      part-00000.npy            float32 [rows, 4096]
           part-00000.paths.jsonl    one JSON string per line, row-aligned with the matrix
  csv      part-00000.csv            wide: path, vgg0 .. vgg4095 (float32 round-trip precision)
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np

FEATURES = "features"
FC7_DIM = 4096


def _part_name(index: int) -> str:
    return f"part-{index:05d}"


class FeatureWriter:
    """Collects (path, fc7) rows and commits them in whole part files."""

    def __init__(self, out_dir: Path, fmt: str, rows_per_part: int):
        self.dir = Path(out_dir) / FEATURES
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.rows_per_part = rows_per_part
        self.parts = 0
        self.rows = 0
        self._paths: List[str] = []
        self._fc7: List[np.ndarray] = []
        self._buffered = 0

    def write(self, paths: Sequence[str], fc7: np.ndarray) -> None:
        fc7 = np.asarray(fc7, dtype=np.float32)
        if fc7.ndim != 2 or fc7.shape[1] != FC7_DIM or fc7.shape[0] != len(paths):
            raise ValueError(f"writer got {len(paths)} paths and fc7 of shape {fc7.shape}")
        start = 0
        while start < len(paths):
            take = min(self.rows_per_part - self._buffered, len(paths) - start)
            self._paths.extend(paths[start:start + take])
            self._fc7.append(fc7[start:start + take])
            self._buffered += take
            start += take
            if self._buffered == self.rows_per_part:
                self._flush()

    def close(self) -> int:
        if self._buffered:
            self._flush()
        return self.rows

    def _flush(self) -> None:
        name = _part_name(self.parts)
        matrix = np.concatenate(self._fc7, axis=0)
        getattr(self, f"_write_{self.fmt}")(name, self._paths, matrix)
        self.parts += 1
        self.rows += len(self._paths)
        self._paths, self._fc7, self._buffered = [], [], 0

    def _commit(self, final: Path, write) -> None:
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def _write_parquet(self, name: str, paths: List[str], matrix: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "path": pa.array(paths, pa.string()),
            "fc7": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), FC7_DIM),
        })
        self._commit(self.dir / f"{name}.parquet", lambda f: pq.write_table(table, f))

    def _write_npy(self, name: str, paths: List[str], matrix: np.ndarray) -> None:
        # The path index first: a part counts as written once its .npy exists.
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in paths)
        self._commit(self.dir / f"{name}.paths.jsonl", lambda f: f.write(lines.encode("utf-8")))
        self._commit(self.dir / f"{name}.npy", lambda f: np.save(f, matrix))

    def _write_csv(self, name: str, paths: List[str], matrix: np.ndarray) -> None:
        def write(f):
            import io
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            w = csv.writer(text, quoting=csv.QUOTE_MINIMAL)
            w.writerow(["path"] + [f"vgg{i}" for i in range(FC7_DIM)])
            for p, row in zip(paths, matrix):
                # '%.9g' round-trips every float32 exactly.
                w.writerow([p] + ["%.9g" % v for v in row.tolist()])
            text.flush()
            text.detach()
        self._commit(self.dir / f"{name}.csv", write)


def iter_parts(out_dir: Path) -> Iterator[Tuple[List[str], np.ndarray]]:
    """(paths, fc7 float32 [n, 4096]) per part, in row order, for any output format."""
    d = Path(out_dir) / FEATURES
    parquet = sorted(d.glob("part-*.parquet"))
    npy = sorted(d.glob("part-*[0-9].npy"))
    csvs = sorted(d.glob("part-*.csv"))
    if sum(map(bool, (parquet, npy, csvs))) > 1:
        raise ValueError(f"{d} mixes output formats; expected one of parquet, npy, csv")
    for f in parquet:
        import pyarrow.parquet as pq
        t = pq.read_table(f)
        fc7 = t.column("fc7").combine_chunks().flatten().to_numpy().reshape(-1, FC7_DIM)
        yield t.column("path").to_pylist(), fc7.astype(np.float32, copy=False)
    for f in npy:
        index = f.with_name(f.name[:-len(".npy")] + ".paths.jsonl")
        paths = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines()]
        yield paths, np.load(f)
    for f in csvs:
        import pandas as pd
        df = pd.read_csv(f, dtype={"path": str}, keep_default_na=False)
        yield df["path"].tolist(), df.iloc[:, 1:].to_numpy(np.float32)


def read_features(out_dir: Path) -> Tuple[List[str], np.ndarray]:
    """All rows of a finished output: (paths, fc7 float32 [n, 4096])."""
    paths: List[str] = []
    mats = []
    for p, m in iter_parts(out_dir):
        paths.extend(p)
        mats.append(m)
    return paths, (np.concatenate(mats) if mats else np.zeros((0, FC7_DIM), np.float32))
