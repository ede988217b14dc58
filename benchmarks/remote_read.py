"""The same images from a local folder and from a loopback HTTP server that adds latency to
every request: does the Python stage's read-ahead keep the model fed?

    .venv/bin/python benchmarks/remote_read.py --images 96 --delay-ms 50 --reps 2

Writes `--images` JPEGs (made from the demo images at several sizes, 10% camera-size), runs the
job (defaults, synthetic weights, the remote extra needed) over the folder and over an
`input.list` of http:// URLs served by tests/http_files.py with `--delay-ms` added to every
request, alternating rep by rep, and reports images/s of each run (new features over the run's
wall time, from the manifest) and the ratio remote/local. Prints `lscpu`'s model and flags.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu  # noqa: E402 - benchmarks/ is on sys.path as the script's folder


def make_images(d: Path, n: int) -> list:
    from PIL import Image

    demo = [p for p in sorted((ROOT / "demo_images").rglob("*")) if p.suffix.lower() in
            (".jpg", ".png")]
    rng = np.random.default_rng(0)
    names = []
    for k in range(n):
        im = Image.open(demo[k % len(demo)]).convert("RGB")
        side = 3000 if k % 10 == 0 else int(rng.integers(300, 900))
        im = im.resize((side, int(side * 0.75)))
        name = f"img{k:04d}.jpg"
        im.save(d / name, quality=90)
        names.append(name)
    return names


def run_job(tmp: Path, input_section: dict, out: Path) -> float:
    import yaml

    cfg = {"input": input_section, "output": {"dir": str(out), "overwrite": True},
           "model": {"weights": "synthetic", "cache_dir": str(ROOT / ".cache")}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "estimator_vgg", str(path)], cwd=tmp,
                       capture_output=True, text=True, timeout=3600,
                       env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode != 0:
        sys.exit(f"job failed ({r.returncode}): {r.stderr[-3000:]}")
    run = json.loads((out / "manifest.json").read_text())["runs"][-1]
    print(f"  {input_section.get('dir') and 'local ' or 'remote'}: {run['new_features']} images in "
          f"{run['seconds']:.1f} s, first batch after {run['first_batch_s']:.1f} s, input wait "
          f"share {run.get('input_wait_share')}", flush=True)
    return run["new_features"] / run["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    from http_files import serve

    print(f"cpu: {cpu()}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        imgs = tmp / "imgs"
        imgs.mkdir()
        names = make_images(imgs, args.images)
        files = {f"/{n}": (imgs / n).read_bytes() for n in names}
        local, remote = [], []
        with serve(files, delay_s=args.delay_ms / 1000) as srv:
            lst = tmp / "urls.txt"
            lst.write_text("".join(srv.url(f"/{n}") + "\n" for n in names))
            for rep in range(args.reps):
                local.append(run_job(tmp, {"dir": str(imgs)}, tmp / "local"))
                t0 = time.time()
                remote.append(run_job(tmp, {"list": str(lst)}, tmp / "remote"))
                print(f"rep {rep + 1}: local {local[-1]:.2f} images/s, remote (+{args.delay_ms:g}"
                      f" ms a request) {remote[-1]:.2f} images/s, {time.time() - t0:.0f} s",
                      flush=True)
        a = np.stack(__import__("pandas").read_parquet(tmp / "local" / "features")["fc7"])
        b = np.stack(__import__("pandas").read_parquet(tmp / "remote" / "features")["fc7"])
        same = bool(np.array_equal(a, b))
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"summary: {args.images} images, +{args.delay_ms:g} ms a request: local {lm:.2f}, "
          f"remote {rm:.2f} images/s (medians of {args.reps}); remote/local {rm / lm:.3f} "
          f"(target >= 0.9); fc7 bitwise equal: {same}")


if __name__ == "__main__":
    main()
