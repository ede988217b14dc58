"""The output stage alone (fake fc7 rows, no model): writing and reading back, against the
seed-style script's growing pandas.concat.

    .venv/bin/python benchmarks/output_stage.py [--rows 10000 100000] [--seed-rows 2000 10000]

Prints, for each row count: seconds to write the rows in parts (this job's writer, parquet),
seconds for read_features to load them back as one matrix, and the same rows gathered the
seed script's way (a DataFrame grown by pd.concat per batch of 32, then one wide CSV).
Ratios between row counts show how each scales: linear writing costs 10x for 10x the rows.
"""
import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from estimator_vgg.manifest import Fingerprint  # noqa: E402
from estimator_vgg.store import Store  # noqa: E402
from estimator_vgg.output import read_features  # noqa: E402

BATCH = 32
PART = 1024


def fake_rows(n: int, rng) -> np.ndarray:
    return rng.random((n, 4096), dtype=np.float32)


def ours_write(out: Path, n: int) -> float:
    """The job's commits: features part, errors part, manifest, per part of 1024 rows."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    store = Store(out, "parquet")
    store.open(Fingerprint.from_dict({"output_format": "parquet", "benchmark": "output_stage"}),
               {}, overwrite=False)
    for index, lo in enumerate(range(0, n, PART)):
        hi = min(lo + PART, n)
        store.commit(index, [f"img/{i:08d}.jpg" for i in range(lo, hi)],
                     fake_rows(hi - lo, rng), [])
    return time.perf_counter() - start


def ours_read(out: Path, n: int) -> float:
    start = time.perf_counter()
    paths, m = read_features(out)
    assert m.shape == (n, 4096) and len(paths) == n
    return time.perf_counter() - start


def seed_style(out: Path, n: int) -> float:
    import pandas as pd
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    df = pd.DataFrame()
    for lo in range(0, n, BATCH):
        hi = min(lo + BATCH, n)
        batch = pd.DataFrame(fake_rows(hi - lo, rng), columns=[f"vgg{i}" for i in range(4096)])
        batch.insert(0, "path", [f"img/{i:08d}.jpg" for i in range(lo, hi)])
        df = pd.concat([df, batch], ignore_index=True)
    df.to_csv(out / "features.csv", index=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--seed-rows", type=int, nargs="+", default=[2000, 10000])
    args = ap.parse_args()
    print(f"# output stage, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"{'method':<34}{'rows':>8}{'seconds':>10}{'rows/s':>12}")
    results = {}
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            w = ours_write(Path(tmp), n)
            r = ours_read(Path(tmp), n)
        results[("write", n)], results[("read", n)] = w, r
        print(f"{'job writer (parquet parts)':<34}{n:>8}{w:>10.2f}{n / w:>12.0f}")
        print(f"{'read_features (one matrix)':<34}{n:>8}{r:>10.2f}{n / r:>12.0f}")
    for n in args.seed_rows:
        with tempfile.TemporaryDirectory() as tmp:
            s = seed_style(Path(tmp), n)
        results[("seed", n)] = s
        print(f"{'seed style (concat + wide CSV)':<34}{n:>8}{s:>10.2f}{n / s:>12.0f}")
    for kind, ns in (("write", args.rows), ("read", args.rows), ("seed", args.seed_rows)):
        if len(ns) >= 2:
            a, b = ns[0], ns[-1]
            print(f"scaling {kind}: {b} rows cost {results[(kind, b)] / results[(kind, a)]:.1f}x "
                  f"{a} rows (rows x{b / a:.0f})")


if __name__ == "__main__":
    main()
