"""What running on Ray costs: the same images, the same config, locally and on a two-node Ray
cluster on loopback, and where the difference goes.

    .venv/bin/python benchmarks/ray_overhead.py [--images 48] [--rows-per-part 12]

Both runs are the command a user types (`python -m estimator_vgg CONFIG ...`), timed from the
outside, with synthetic weights and one CPU tower of batch 8. The cluster is two `ray start`
nodes of one CPU each on this machine (tests/ray_cluster.py), so two shards run at once on
the machine's two cores: on one machine Ray cannot be faster than the local run, and what
this measures is the overhead. The breakdown comes from the run record in manifest.json:
  cluster start   `ray start --head` plus one `ray start --address`, until both nodes joined
  connect         the driver's ray.init
  worker start    a fresh worker's age when its first shard starts: process spawn, Python,
                  Ray's worker set-up, importing TensorFlow, unpickling the arguments
  to 1st batch    per shard: Estimator and graph build, checkpoint restore, first decode
Both runs are checked to give the same rows bitwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _job(cfg: Path, out: Path, env: dict, *overrides) -> float:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "estimator_vgg", str(cfg), f"output.dir={out}",
                        *overrides], env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"the job failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rows-per-part", type=int, default=12, help="images per shard")
    args = ap.parse_args()

    import numpy as np

    from estimator_vgg.manifest import read_manifest
    from estimator_vgg.output import read_features
    from ray_cluster import loopback_cluster
    from throughput import make_images

    tmp = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    images = tmp / "images"
    make_images(images, args.images)
    cfg = tmp / "job.yaml"
    cfg.write_text(f"input:\n  dir: {images}\nmodel:\n  weights: synthetic\n"
                   f"  cache_dir: {ROOT / '.cache'}\ndevices:\n  cpus: 1\n  batch_size: 8\n"
                   f"output:\n  rows_per_part: {args.rows_per_part}\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))

    local_s = _job(cfg, tmp / "local", env)
    local = read_manifest(tmp / "local").runs[-1].to_dict()
    with loopback_cluster(nodes=2, cpus_per_node=1, env={"PYTHONPATH": str(ROOT)}) as c:
        ray_s = _job(cfg, tmp / "ray", c.env, "run.executor=ray",
                     f"run.ray.address={c.address}")
        start_s = c.start_s
    run = read_manifest(tmp / "ray").runs[-1].to_dict()
    a, b = read_features(tmp / "local"), read_features(tmp / "ray")
    same = a[0] == b[0] and np.array_equal(a[1], b[1])

    shards = run["shards"]
    fresh = [s for s in shards if s["fresh_worker"]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"{args.images} images, {len(shards)} shards of up to {args.rows_per_part}, "
          f"2 nodes x 1 CPU; outputs identical: {same}")
    print()
    print("| | seconds |")
    print("| --- | --- |")
    print(f"| local run, command to exit | {local_s:.1f} |")
    print(f"| local run, first batch after | {local['first_batch_s']:.1f} |")
    print(f"| Ray run, command to exit | {ray_s:.1f} ({ray_s / local_s:.2f}x local) |")
    print(f"| cluster start (2 nodes joined; paid once per cluster) | {start_s:.1f} |")
    print(f"| driver connect (ray.init) | {run['connect_s']:.1f} |")
    print(f"| worker start-up incl. TF import ({len(fresh)} fresh workers for {len(shards)} "
          f"shards), mean | {np.mean([s['worker_age_s'] for s in fresh]) if fresh else 0:.1f} |")
    print(f"| shard start to first batch (graph build, restore, decode), mean | "
          f"{np.mean([s['first_batch_s'] for s in shards]):.1f} |")
    print(f"| shard wall time, mean | {np.mean([s['seconds'] for s in shards]):.1f} |")
    print(f"| shards per node | "
          f"{json.dumps({n: sum(s['node'] == n for s in shards) for n in {s['node'] for s in shards}})} |")
    if not same:
        sys.exit("the Ray run's output differs from the local run's")


if __name__ == "__main__":
    main()
