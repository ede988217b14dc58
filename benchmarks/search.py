"""Search at scale: an ANN index over a synthetic output, against exact search.

    .venv/bin/python benchmarks/search.py --rows 100000
    .venv/bin/python benchmarks/search.py --rows 100000 1000000 --dir /data/bench

For each N it writes a synthetic output of N rows through the job's real store (Store.open,
Store.commit: the Parquet parts a job writes), then measures, each step a command as a user
runs it (a subprocess, so its peak memory is its own):
  read      read_features of the first min(N, --read-rows) rows, in this release's layout and
            in the layout earlier releases wrote (pyarrow's defaults), same rows
  build     `estimator-vgg index OUT --pca 256` (or --index-args): seconds, peak RSS
  query     warm latency of one query by vector (SearchIndex.search, after load_index and a
            first query): median and 95th percentile over 200 queries
  recall    recall@10 of the index against exact cosine search on the full 4096-d fc7, over
            1,000 sampled rows (each query's own row left out of both)
  dups      `estimator-vgg neighbors OUT --duplicates 0.98`: seconds, peak RSS, pairs found,
            share of the planted near-duplicate pairs among them
  path      `estimator-vgg neighbors OUT img/<row>.jpg -k 3` (a query by a path of the
            output, through the index): seconds and peak RSS of the whole command, median of
            --path-reps runs over different rows, beside the time to read the index's path
            column alone; also on the earlier releases' copy of the first --read-rows rows,
            indexed the same way, and the duplicate search there
The last line sums up every N. --only-path: write, build and path only (how a query by path
grows with N, without the hour the duplicates take at 1,000,000 rows).

The synthetic fc7: rows fall in clusters (about 200 rows each) of a 32-d latent space, lifted
to 4096-d by one fixed random matrix, ReLU'd (about half the values are zero, as in fc7), plus
independent noise in every coordinate. A planted near-duplicate (0.5% of the rows) is an earlier row of
its part or the part before, plus a small perturbation in every coordinate (cosine 0.985 to
0.998 to its original: a perturbation that would go below 0.985 is halved); other pairs of a cluster are near 0.8. How well PCA keeps neighbours depends on the data's spectrum: measure on
your own output before relying on the recall figure here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu  # noqa: E402 - benchmarks/ is on sys.path as the script's folder

LATENT = 32
CLUSTER_ROWS = 200
NOISE = float(os.environ.get("SEARCH_BENCH_NOISE", "0.25"))
DUP_SHARE = 0.005     # of the rows are planted copies of another row
PLANTED_MIN = 0.985   # a planted copy's cosine to its original is at least this


def make_output(out: Path, rows: int, rows_per_part: int, seed: int = 0):
    """A synthetic output of `rows` rows; returns the planted pairs (path_a, path_b)."""
    from estimator_vgg.manifest import Fingerprint, Preprocessing
    from estimator_vgg.store import Store

    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((LATENT, 4096)).astype(np.float32) / np.sqrt(LATENT)
    clusters = max(1, rows // CLUSTER_ROWS)
    centers = rng.standard_normal((clusters, LATENT)).astype(np.float32) * 1.5
    fp = Fingerprint("vgg16/fc7", "float32", "f" * 64, True,
                     Preprocessing("synthetic-benchmark", "center_crop", True, 224,
                                   [103.939, 116.779, 123.68]), "parquet", str(out / "none"))
    store = Store(out, "parquet")
    store.open(fp, {"input": {"dir": str(out / "none")}, "benchmark": "search.py"},
               overwrite=True)
    # planted: row j is a copy of an earlier row of its part or the part before (as a
    # re-encoded or resized copy: the same fc7 plus a small perturbation)
    is_dup = rng.random(rows) < DUP_SHARE
    planted = []
    prev = np.zeros((0, 4096), np.float32)
    for start in range(0, rows, rows_per_part):
        n = min(rows_per_part, rows - start)
        c = rng.integers(0, clusters, n)
        z = centers[c] + rng.standard_normal((n, LATENT), dtype=np.float32)
        fc7 = np.maximum(z @ lift + NOISE * rng.standard_normal((n, 4096), dtype=np.float32),
                         0)
        for i in np.nonzero(is_dup[start:start + n])[0]:
            if i == 0 and not len(prev):
                continue
            src = int(rng.integers(-len(prev), i))
            base = fc7[src] if src >= 0 else prev[src]
            shift = rng.uniform(0.1, 0.25)
            noise = rng.standard_normal(4096, dtype=np.float32)
            while True:   # a near-duplicate by construction: cosine at least PLANTED_MIN
                copy = np.maximum(base + shift * noise, 0)
                if copy @ base >= PLANTED_MIN * np.linalg.norm(copy) * np.linalg.norm(base):
                    break
                shift /= 2
            fc7[i] = copy
            planted.append((start + src, start + i))
        paths = [f"img/{start + i:08d}.jpg" for i in range(n)]
        store.commit(start // rows_per_part, paths, fc7, [])
        prev = fc7
    name = lambda i: f"img/{i:08d}.jpg"  # noqa: E731
    return [(name(a), name(b)) for a, b in planted]


def run_measured(cmd):
    """(seconds, peak RSS MB, stdout): the child's own peak, through a fresh wrapper process so
    that RUSAGE_CHILDREN holds this command only."""
    wrapper = ("import resource, subprocess, sys, time, json;"
               "t = time.time(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               "s = time.time() - t;"
               "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024;"
               "sys.stderr.write(p.stderr);"
               "print(json.dumps({'rc': p.returncode, 's': s, 'mb': r, 'out': p.stdout}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], capture_output=True,
                       text=True, timeout=7200,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT)))
    r = json.loads(p.stdout.splitlines()[-1])
    if r["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r['rc']}):\n{p.stderr[-3000:]}")
    return r["s"], r["mb"], r["out"]


def _first_parts(manifest, rows: int) -> list:
    """The manifest's first parts, enough of them to hold `rows` feature rows."""
    keep, n = [], 0
    for p in manifest.parts:
        if n >= rows:
            break
        keep.append(p)
        n += p.features
    return keep


def write_earlier_layout(src: Path, dst: Path, rows: int) -> None:
    """A copy of the first `rows` rows of `src` with parts as earlier releases wrote them
    (pq.write_table's defaults: snappy, 1 MiB pages), same manifest otherwise."""
    import pyarrow.parquet as pq

    from estimator_vgg.manifest import read_manifest
    m = read_manifest(src)
    keep = _first_parts(m, rows)
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "features").mkdir(parents=True)
    shutil.copytree(src / "errors", dst / "errors")
    for p in keep:
        t = pq.read_table(src / "features" / f"{p.name}.parquet").replace_schema_metadata(None)
        pq.write_table(t, dst / "features" / f"{p.name}.parquet")
    m.parts = keep
    (dst / "manifest.json").write_bytes(m.to_json())


def read_seconds(out: Path, reps: int = 3) -> float:
    from estimator_vgg.output import read_features
    read_features(out)   # the page cache warm, as for the other
    best = float("inf")
    for _ in range(reps):
        t = time.time()
        read_features(out)
        best = min(best, time.time() - t)
    return best


def first_rows_output(src: Path, dst: Path, rows: int) -> None:
    """A view of the first parts of `src` holding `rows` rows (hard links, same layout)."""
    from estimator_vgg.manifest import read_manifest
    m = read_manifest(src)
    keep = _first_parts(m, rows)
    if dst.exists():
        shutil.rmtree(dst)
    for sub in ("features", "errors"):
        (dst / sub).mkdir(parents=True)
        for p in keep:
            os.link(src / sub / f"{p.name}.parquet", dst / sub / f"{p.name}.parquet")
    m.parts = keep
    (dst / "manifest.json").write_bytes(m.to_json())


def exact_top(out: Path, queries: np.ndarray, query_rows: np.ndarray, k: int):
    """Exact top-k row ids by cosine of the full fc7, each query's own row left out."""
    from estimator_vgg.output import iter_parts
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    start = 0
    for _, fc7 in iter_parts(out):
        u = fc7 / np.maximum(np.linalg.norm(fc7, axis=1, keepdims=True), 1e-12)
        s = q @ u.T
        own = (query_rows >= start) & (query_rows < start + len(fc7))
        s[np.nonzero(own)[0], query_rows[own] - start] = -np.inf
        ids = np.arange(start, start + len(fc7))[None, :].repeat(len(q), 0)
        s = np.concatenate([best_s, s], 1)
        ids = np.concatenate([best_i, ids], 1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
        start += len(fc7)
    return best_i


def gather_rows(out: Path, rows: np.ndarray) -> np.ndarray:
    from estimator_vgg.output import iter_parts
    want = np.sort(rows)
    got = np.empty((len(rows), 4096), np.float32)
    start = 0
    for _, fc7 in iter_parts(out):
        sel = (want >= start) & (want < start + len(fc7))
        got[np.nonzero(sel)[0]] = fc7[want[sel] - start]
        start += len(fc7)
    order = np.argsort(np.argsort(rows))
    return got[order]


def path_queries(out: Path, rows: int, args, key: str) -> dict:
    """A query by path from the command line, --path-reps times over rows spread over the
    output: median seconds and peak MB; and reading the index's path column alone."""
    import pyarrow.parquet as pq

    exe = [sys.executable, "-m", "estimator_vgg", "neighbors", out]
    runs = [run_measured([*exe, f"img/{r:08d}.jpg", "-k", "3"])
            for r in np.linspace(0, rows - 1, args.path_reps).astype(int)]
    t = time.time()
    pq.read_table(out / "index" / "paths.parquet").column("path").to_pylist()
    return {f"{key}_s": float(np.median([s for s, _, _ in runs])),
            f"{key}_mb": float(max(mb for _, mb, _ in runs)),
            f"{key}_column_s": time.time() - t}


def bench(rows: int, base: Path, args) -> dict:
    out = base / f"search-{rows}"
    res = {"rows": rows}
    t = time.time()
    planted = make_output(out, rows, args.rows_per_part)
    res["write_s"] = time.time() - t
    disk = sum(f.stat().st_size for f in (out / "features").iterdir())
    res["disk_gb"] = disk / 1e9
    print(f"[{rows}] wrote the output: {res['write_s']:.1f} s, {disk / 1e9:.2f} GB, "
          f"{len(planted)} planted pairs", flush=True)

    exe = [sys.executable, "-m", "estimator_vgg"]
    if args.only_path:
        return {**res, **build_and_query_by_path(out, rows, args, exe)}

    # read_features: this release's layout against earlier releases', same rows
    nread = min(rows, args.read_rows)
    new_view, old_view = base / f"read-new-{rows}", base / f"read-old-{rows}"
    first_rows_output(out, new_view, nread)
    write_earlier_layout(out, old_view, nread)
    res["read_new_s"] = read_seconds(new_view)
    res["read_old_s"] = read_seconds(old_view)
    old_disk = sum(f.stat().st_size for f in (old_view / "features").iterdir())
    new_disk = sum(f.stat().st_size for f in (new_view / "features").iterdir())
    res["read_rows"] = nread
    res["disk_ratio"] = new_disk / old_disk
    shutil.rmtree(new_view)
    print(f"[{rows}] read_features of {nread} rows: {res['read_new_s']:.2f} s (this layout), "
          f"{res['read_old_s']:.2f} s (earlier releases' layout): "
          f"{res['read_old_s'] / res['read_new_s']:.1f}x; disk {res['disk_ratio']:.2f}x",
          flush=True)

    res.update(build_and_query_by_path(out, rows, args, exe))
    run_measured([*exe, "index", old_view, *args.index_args.split()])
    res.update(path_queries(old_view, nread, args, "path_old"))
    print(f"[{rows}] query by path: {res['path_s']:.2f} s, peak {res['path_mb']:.0f} MB "
          f"(path column alone {res['path_column_s']:.2f} s); on the earlier layout "
          f"({nread} rows): {res['path_old_s']:.2f} s, peak {res['path_old_mb']:.0f} MB",
          flush=True)
    s, mb, _ = run_measured([*exe, "neighbors", old_view, "--duplicates", args.threshold,
                             "--pairs", base / "pairs-old.parquet"])
    res["dups_old_s"], res["dups_old_mb"] = s, mb
    print(f"[{rows}] duplicates >= {args.threshold} on the earlier layout ({nread} rows): "
          f"{s:.1f} s, peak {mb:.0f} MB", flush=True)
    shutil.rmtree(old_view)

    from estimator_vgg.index import load_index
    t = time.time()
    idx = load_index(out)
    res["load_s"] = time.time() - t
    rng = np.random.default_rng(1)
    qrows = np.sort(rng.choice(rows, size=min(args.queries, rows), replace=False))
    qvec = gather_rows(out, qrows)
    idx.search(qvec[:1], 10)  # warm
    lat = []
    for v in qvec[:200]:
        t = time.perf_counter()
        idx.search(v, 10)
        lat.append(time.perf_counter() - t)
    res["query_ms_median"] = 1000 * float(np.median(lat))
    res["query_ms_p95"] = 1000 * float(np.percentile(lat, 95))
    got = idx.search(qvec, 11)
    exact = exact_top(out, qvec, qrows, 10)
    row_of = {p: i for i, p in enumerate(idx.paths)}
    hits = 0
    for r, matches, want in zip(qrows, got, exact):
        ids = [row_of[m.path] for m in matches if row_of[m.path] != r][:10]
        hits += len(set(ids) & set(want.tolist()))
    res["recall10"] = hits / (10 * len(qrows))
    print(f"[{rows}] query: median {res['query_ms_median']:.2f} ms, p95 "
          f"{res['query_ms_p95']:.2f} ms (warm, one vector); recall@10 vs exact 4096-d "
          f"{res['recall10']:.4f} over {len(qrows)} queries; load {res['load_s']:.1f} s",
          flush=True)
    del idx

    pairs = base / f"pairs-{rows}.parquet"
    s, mb, text = run_measured([*exe, "neighbors", out, "--duplicates", args.threshold,
                                "--pairs", pairs])
    res["dups_s"], res["dups_mb"] = s, mb
    import pyarrow.parquet as pq
    t = pq.read_table(pairs).to_pydict()
    found = {tuple(sorted(p)) for p in zip(t["path_a"], t["path_b"])}
    want = {tuple(sorted(p)) for p in planted}
    res["pairs"] = len(found)
    res["planted_found"] = len(found & want) / max(1, len(want))
    res["first_line"] = text.splitlines()[0] if text else ""
    print(f"[{rows}] duplicates >= {args.threshold}: {s:.1f} s, peak {mb:.0f} MB, "
          f"{len(found)} pairs, {res['planted_found']:.4f} of {len(want)} planted pairs found",
          flush=True)
    print(f"[{rows}] {res['first_line']}", flush=True)
    pairs.unlink()
    if not args.keep:
        shutil.rmtree(out)
    return res


def build_and_query_by_path(out, rows: int, args, exe) -> dict:
    """`estimator-vgg index OUT`, timed, then the queries by path over it."""
    s, mb, text = run_measured([*exe, "index", out, *args.index_args.split()])
    res = {"build_s": s, "build_mb": mb,
           "kind": next((ln for ln in text.splitlines() if " built " in ln), "").strip()}
    print(text.strip(), flush=True)
    print(f"[{rows}] index build: {s:.1f} s, peak {mb:.0f} MB", flush=True)
    res.update(path_queries(out, rows, args, "path"))
    if args.only_path:
        print(f"[{rows}] query by path: {res['path_s']:.2f} s, peak {res['path_mb']:.0f} MB "
              f"(path column alone {res['path_column_s']:.2f} s)", flush=True)
        if not args.keep:
            shutil.rmtree(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dir", type=Path, help="where to write the outputs (default: a "
                    "temporary folder; 1,000,000 rows take about 16 GB)")
    ap.add_argument("--rows-per-part", type=int, default=1024,
                    help="rows per part (default 1024, the job's output.rows_per_part)")
    ap.add_argument("--read-rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threshold", default="0.98")
    ap.add_argument("--index-args", default="--pca 256",
                    help="arguments of `estimator-vgg index` (default: --pca 256)")
    ap.add_argument("--path-reps", type=int, default=5,
                    help="queries by path from the command line (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--only-path", action="store_true",
                    help="write the output, build the index and time queries by path only "
                         "(no read, query, recall or duplicates step, no earlier layout): "
                         "how a query by path grows with N, in minutes instead of an hour")
    args = ap.parse_args()
    print(f"machine: {cpu()}; Python {platform.python_version()}", flush=True)
    base = args.dir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    results = [bench(n, base, args) for n in args.rows]
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    if args.only_path:
        print("| rows | build s | build peak MB | query by path s | peak MB | path column s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            print(f"| {r['rows']} | {r['build_s']:.1f} | {r['build_mb']:.0f} | "
                  f"{r['path_s']:.2f} | {r['path_mb']:.0f} | {r['path_column_s']:.2f} |")
        return
    print("| rows | build s | build peak MB | query ms (median/p95) | recall@10 | "
          "duplicates s | planted found | read_features s (now/before) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']} | {r['build_s']:.1f} | {r['build_mb']:.0f} | "
              f"{r['query_ms_median']:.2f}/{r['query_ms_p95']:.2f} | {r['recall10']:.4f} | "
              f"{r['dups_s']:.1f} | {r['planted_found']:.4f} | "
              f"{r['read_new_s']:.2f}/{r['read_old_s']:.2f} ({r['read_rows']} rows) |")
    print("\n| rows | query by path s | peak MB | path column s | earlier layout: rows, query "
          "by path s, peak MB, duplicates s |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(f"| {r['rows']} | {r['path_s']:.2f} | {r['path_mb']:.0f} | "
              f"{r['path_column_s']:.2f} | {r['read_rows']}, {r['path_old_s']:.2f}, "
              f"{r['path_old_mb']:.0f}, {r['dups_old_s']:.1f} |")
    print("summary: " + "; ".join(
        f"{r['rows']} rows: build {r['build_s']:.0f} s peak {r['build_mb']:.0f} MB, query "
        f"{r['query_ms_median']:.1f} ms, recall@10 {r['recall10']:.3f}, duplicates "
        f"{r['dups_s']:.0f} s found {r['planted_found']:.3f}, read "
        f"{r['read_old_s'] / r['read_new_s']:.1f}x faster" for r in results))


if __name__ == "__main__":
    main()
