"""Outputs on an object store: what they cost against a local folder, measured in one run.

    .venv/bin/python benchmarks/object_store.py --images 96 --reps 2
    .venv/bin/python benchmarks/object_store.py --commits-only

job      the same job (throughput.py's generated JPEGs, one CPU tower of batch 8, parts of
         --rows-per-part rows) writing to a local folder and to S3 (moto's server on
         loopback), alternated rep by rep, each a fresh command: images/s after the first
         batch (first_batch_s and seconds of the manifest's run record), and the ratio
commits  one part's commit on a store that already holds 10, 1,000 and 10,000 parts: the
         seconds and the bytes the commit writes (its record), beside a local folder's commit
         (manifest.json rewritten whole); and opening such an output after a run that died
         before writing its manifest.json (its records read by key, whole blocks of 256 from
         their block objects)
Prints the CPU model and flags first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # throughput.py imports TensorFlow
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu  # noqa: E402 - benchmarks/ is on sys.path as the script's folder


def job_rate(images: Path, out: str, storage_options, rows_per_part: int, tmp: Path) -> float:
    """images/s of one job after its first batch, from its manifest's run record."""
    import yaml

    cfg = {"input": {"dir": str(images)},
           "output": {"dir": out, "rows_per_part": rows_per_part, "overwrite": True},
           "model": {"weights": "synthetic", "cache_dir": str(ROOT / ".cache")},
           "devices": {"cpus": 1, "batch_size": 8}}
    if storage_options:
        cfg["output"]["storage_options"] = storage_options
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "estimator_vgg", str(path)], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                           TF_CPP_MIN_LOG_LEVEL="3"), timeout=3600)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    from estimator_vgg.output import read_output_manifest
    from estimator_vgg.storage import location
    from types import SimpleNamespace
    run = read_output_manifest(location(out, SimpleNamespace(
        storage_options=storage_options))).runs[-1]
    return run.new_features / (run.seconds - run.first_batch_s)


def bench_job(args, srv, tmp: Path) -> None:
    from throughput import make_images

    images = tmp / "images"
    images.mkdir()
    make_images(images, args.images)
    job_rate(images, str(tmp / "warm"), None, args.rows_per_part, tmp)   # converts the weights
    local, store = [], []
    for rep in range(args.reps):
        local.append(job_rate(images, str(tmp / "local"), None, args.rows_per_part, tmp))
        store.append(job_rate(images, "s3://bench/out", srv.storage_options,
                              args.rows_per_part, tmp))
        print(f"  rep {rep}: local {local[-1]:.2f} images/s, s3 {store[-1]:.2f}", flush=True)
    lm, sm = statistics.median(local), statistics.median(store)
    print(f"job, {args.images} images, parts of {args.rows_per_part}: local {lm:.2f} images/s, "
          f"s3 (moto on loopback) {sm:.2f}: {sm / lm:.2f}x (medians of {args.reps})")


def bench_commits(srv, counts, tmp: Path) -> None:
    """Commit times and bytes at each part count (parts of one row; the records of all but
    the last part made directly, as a long run leaves them)."""
    from types import SimpleNamespace

    from estimator_vgg.bucket_store import BucketStore
    from estimator_vgg.manifest import Fingerprint, PartRecord, RunRecord
    from estimator_vgg.output import SEGMENT, commit_name, read_output_manifest, segment_name
    from estimator_vgg.sections import OutputConfig
    from estimator_vgg.storage import location
    from estimator_vgg.store import Store

    fp = Fingerprint.from_dict({"output_format": "parquet", "model": "synthetic"})
    row = np.ones((1, 4096), np.float32)
    print("| parts before | store: commit s | store: bytes written | folder: commit s | "
          "folder: bytes written | store: open after a crash s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in counts:
        uri = f"s3://bench/commits-{n}"
        cfg = OutputConfig(dir=uri, storage_options=srv.storage_options)
        store = BucketStore(cfg)
        store.open(fp, {"input": {"dir": "x"}}, overwrite=True)
        objects = {"features": [{"key": "features/x.parquet", "size": 1}],
                   "errors": {"key": "errors/x.parquet", "size": 1}}
        block = []
        for k in range(n):   # a long run's records (and blocks), as they are on the store
            record = {"seq": k, "run": store.run_id,
                      "part": PartRecord(k, 1, 0, objects).to_dict()}
            srv.client.put_object(Bucket="bench", Key=f"commits-{n}/{commit_name(k)}",
                                  Body=json.dumps(record).encode())
            block.append(record)
            if len(block) == SEGMENT:
                srv.client.put_object(Bucket="bench", Body=json.dumps(block).encode(),
                                      Key=f"commits-{n}/{segment_name(k // SEGMENT)}")
                block = []
        store.manifest.parts += [PartRecord(k, 1, 0, objects) for k in range(n)]
        store.manifest.commits = n
        objs = store.loc.write  # count what the commit writes
        written = []
        store.loc.write = lambda name, w, *a, **k: (written.append(name),
                                                    objs(name, w, *a, **k))[1]
        t = time.perf_counter()
        store.record(n, 1, 0, objects)
        store_s = time.perf_counter() - t
        store.loc.write = objs
        assert not written, written   # a commit creates its record and rewrites nothing
        record_bytes = len(srv.client.get_object(
            Bucket="bench", Key=f"commits-{n}/{commit_name(n)}")["Body"].read())
        store.close()
        t = time.perf_counter()
        m = read_output_manifest(location(uri, SimpleNamespace(
            storage_options=srv.storage_options)))
        open_s = time.perf_counter() - t
        assert len(m.parts) == n + 1
        folder = Store(tmp / f"folder-{n}", "parquet")
        folder.open(fp, {"input": {"dir": "x"}}, overwrite=True)
        folder.manifest.parts += [PartRecord(k, 1, 0) for k in range(n)]
        folder.commit(n, ["a.jpg"], row, [])   # warm
        t = time.perf_counter()
        folder.record(n + 1, 1, 0)
        folder_s = time.perf_counter() - t
        folder_bytes = (tmp / f"folder-{n}" / "manifest.json").stat().st_size
        folder.finish(RunRecord(started="", command=[], versions={}, devices=[]), True)
        print(f"| {n} | {store_s:.4f} | {record_bytes} | {folder_s:.4f} | {folder_bytes} | "
              f"{open_s:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rows-per-part", type=int, default=16)
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 1000, 10000])
    ap.add_argument("--commits-only", action="store_true")
    args = ap.parse_args()
    print(f"machine: {cpu()}", flush=True)
    from s3_server import s3

    with tempfile.TemporaryDirectory() as d, s3({"bench/.keep": b""}) as srv:
        if not args.commits_only:
            bench_job(args, srv, Path(d))
        bench_commits(srv, args.counts, Path(d))


if __name__ == "__main__":
    main()
