"""The duplicate search's range search on a faiss index read whole against memory-mapped.

    .venv/bin/python benchmarks/search.py --rows 100000 --only-path --keep --dir /tmp/ab
    .venv/bin/python benchmarks/index_mmap.py /tmp/ab/search-100000/index [--queries 20000]

Both forms of the same index (`faiss.read_index` with and without IO_FLAG_MMAP) answer the
same range search (the first --queries stored PCA codes, radius 0.97, nprobe 16: what
`neighbors --duplicates 0.98` asks, in one batch), alternated --reps times; prints each time,
the fastest of each and their ratio, with the CPU. Why index_search.SearchIndex maps the
index for queries and reads it whole for the duplicate search.
"""
import argparse
import time

import numpy as np

from machine import cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index_dir", help="an index folder (OUTPUT/index) built with --pca")
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import faiss

    print(f"CPU: {cpu()}; faiss {faiss.__version__}")
    d = args.index_dir
    idx = faiss.read_index(f"{d}/vectors.faiss")
    codes = np.memmap(f"{d}/codes.f32", np.float32, "r").reshape(-1, idx.d)
    q = np.ascontiguousarray(codes[:args.queries])
    forms = {"whole": idx, "mapped": faiss.read_index(f"{d}/vectors.faiss", faiss.IO_FLAG_MMAP)}
    times = {k: [] for k in forms}
    for rep in range(args.reps):
        for k, i in forms.items():
            faiss.extract_index_ivf(i).nprobe = 16
            t = time.perf_counter()
            lims, _, ids = i.range_search(q, 0.97)
            times[k].append(time.perf_counter() - t)
            print(f"rep {rep} {k:6s} {times[k][-1]:.2f} s, {len(ids)} results", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(f"fastest: whole {best['whole']:.2f} s, mapped {best['mapped']:.2f} s; mapped/whole "
          f"{best['mapped'] / best['whole']:.2f}x ({len(q)} queries, {idx.ntotal} rows)")


if __name__ == "__main__":
    main()
