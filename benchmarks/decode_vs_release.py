"""The job's input pipeline against an earlier release's, in one run: images/s of the input_fn
alone (no model) of a git commit and of this checkout, alternated process by process.

    .venv/bin/python benchmarks/decode_vs_release.py [--base eba0a06] [--images 192] [--reps 3]

The decode issue's targets are stated against the input pipeline as it was before that work
(commit eba0a06), whose code no longer exists in this tree, and rates on these machines move
by 20% from one session to the next: so the base is checked out (a temporary `git worktree`,
removed at the end) and measured in the same run, each variant in a fresh process:
  base       the base commit's input_fn, default settings, bad-file handling on
  default    this checkout's input_fn, default settings (exact), bad-file handling on
  fast       this checkout's input_fn with preprocess.fast_decode: true
  base-fast  with --base-fast: the base commit's input_fn with preprocess.fast_decode: true
             (a base that has it), to weigh a change to the fast path itself
The images are throughput.py's (10% camera-size photos); the ratios are medians over reps.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
root, images, variant, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, root)
from pathlib import Path
import tensorflow as tf
import estimator_vgg
assert estimator_vgg.__file__.startswith(root), estimator_vgg.__file__
from estimator_vgg.config import load_config
from estimator_vgg.input import input_fn
from estimator_vgg.listing import list_images
paths = list_images(Path(images), ["jpg"])
extra = {"preprocess": {"fast_decode": True}} if variant == "fast" else {}
cfg = load_config(None, input={"dir": images, "decode_threads": threads},
                  output={"dir": str(Path(images).parent / "out")}, model={"weights": "synthetic"},
                  devices={"batch_size": 8}, **extra)
sizes = [len(paths[i:i + 1024]) for i in range(0, len(paths), 1024)]
try:  # what the job runs over local files (whole_batches: a release after eba0a06)
    make = input_fn(cfg, paths, part_sizes=sizes, skip_bad=True, whole_batches=True)
except TypeError:
    make = input_fn(cfg, paths, part_sizes=sizes, skip_bad=True)
options = tf.data.Options()
options.threading.private_threadpool_size = threads  # the base release had no such setting
options.autotune.enabled = False
def rate():
    ds = make().with_options(options)
    start = time.perf_counter()
    n = sum(int(b["image"].shape[0]) for b in ds)
    return n / (time.perf_counter() - start)
rate()  # warm-up: page cache, kernels
print(max(rate(), rate()))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="eba0a06", help="the commit to compare with")
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--base-fast", action="store_true",
                    help="also measure the base commit with preprocess.fast_decode: true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from throughput import machine, make_images, print_ratio_table

    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True, timeout=120)
        try:
            if args.base_fast and "fast_decode" not in (base / "estimator_vgg" /
                                                         "config.py").read_text():
                sys.exit(f"--base-fast: {args.base} has no preprocess.fast_decode; "
                         "choose a later --base")
            images = Path(tmp) / "images"
            make_images(images, args.images)
            roots = {"base": (base, "job"), "default": (ROOT, "job"), "fast": (ROOT, "fast")}
            if args.base_fast:
                roots["base-fast"] = (base, "fast")
            rates: dict = {}
            for threads in args.threads:
                for rep in range(args.reps):
                    for name, (root, variant) in roots.items():
                        out = subprocess.run(
                            [sys.executable, "-c", CHILD, str(root), str(images), variant,
                             str(threads)], capture_output=True, text=True, timeout=900)
                        if out.returncode:
                            sys.exit(f"{name} ({threads} thread(s)) failed:\n{out.stderr[-2000:]}")
                        r = float(out.stdout.split()[-1])
                        rates.setdefault((name, threads), []).append(r)
                        print(f"  rep {rep + 1}: {threads} thread(s) {name:<9} {r:7.1f} images/s",
                              flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                           capture_output=True, timeout=120)
    print(f"\n{args.images} JPEGs, {args.reps} alternated reps, medians; base {args.base}")
    print_ratio_table(rates, tuple(roots), args.threads, "base", "base")


if __name__ == "__main__":
    main()
