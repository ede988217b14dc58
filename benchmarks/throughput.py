"""Images per second and peak memory: the job against the ceiling and the peers, in one run.

    ./run.sh configs/demo.yaml --dry-run            # sets up .venv (Pillow is in the base install)
    .venv/bin/python benchmarks/throughput.py [--images 48] [--reps 3]
    .venv/bin/python benchmarks/throughput.py --memory 200 2000   # peak memory vs image count

Methods, each in a fresh process, alternated rep by rep (this machine is noisy, so compare
ratios measured in one run, not absolute rates):
  ceiling-<p>  the project's VGG16 graph on pre-decoded in-memory tensors, precision p
  job-<p>      the job end to end (runner.run): files on disk to the written output
  jobdct-<p>   the same with preprocess.jpeg_dct_scaling (large JPEGs decoded at 1/2..1/8)
  seed         the script the job replaces: TF1 placeholder graph, PIL decode one by one,
               feed_dict, a DataFrame grown by pd.concat per batch, one wide CSV
  keras        tf.keras.applications.VGG16 cut at fc2 ("fc7"), tf.data pipeline, model.predict
The images are made by this script from the demo photos (random crops resized to 320x240 ..
4000x3000, most near 500x375, JPEG quality 90) and are not committed. The weights are the
seeded synthetic ones: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Images per step (per tower); --batch sets it, and the measuring children read it from here.
BATCH = int(os.environ.get("THROUGHPUT_BATCH", "8"))


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """n realistic JPEGs: crops of the demo photos resized to typical camera/web sizes."""
    import numpy as np
    import tensorflow as tf

    from estimator_vgg.listing import list_images

    rng = np.random.default_rng(seed)
    demo = ROOT / "demo_images"
    sources = [tf.io.decode_image(tf.io.read_file(str(demo / p)), channels=3,
                                  expand_animations=False)
               for p in list_images(demo, ["jpg", "png", "gif", "bmp"])]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:     # web photos around 500x375
            w = int(rng.normal(500, 40))
        elif kind < 0.9:   # medium
            w = int(rng.uniform(640, 1600))
        else:              # camera originals, up to 4000x3000
            w = int(rng.uniform(2000, 4000))
        w = max(320, min(4000, w))
        h = max(240, min(3000, int(w * rng.choice([0.75, 0.667, 1.0, 1.333]))))
        src = sources[i % len(sources)]
        sh, sw = src.shape[0], src.shape[1]
        ch, cw = int(sh * rng.uniform(0.6, 1.0)), int(sw * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
        crop = src[top:top + ch, left:left + cw]
        img = tf.cast(tf.clip_by_value(tf.image.resize(crop, [h, w]), 0, 255), tf.uint8)
        data = tf.io.encode_jpeg(img, quality=90).numpy()
        (folder / f"img_{i:05d}.jpg").write_bytes(data)


# ---- the methods, each run in its own process ---------------------------------------------

def _synthetic_cfg(images: Path, out: Path, precision: str, dct: bool = False,
                   fast: bool = False):
    from estimator_vgg.config import load_config
    threads = os.environ.get("THROUGHPUT_DECODE_THREADS")
    return load_config(None, input={"dir": str(images),
                                    **({"decode_threads": int(threads)} if threads else {})},
                       output={"dir": str(out)},
                       preprocess={"jpeg_dct_scaling": dct, "fast_decode": fast},
                       model={"weights": "synthetic", "precision": precision,
                              "cache_dir": str(ROOT / ".cache")},
                       devices={"cpus": 1, "batch_size": BATCH})


def ceiling(images: Path, precision: str) -> dict:
    """The model alone: the job's VGG16 graph on in-memory tensors, restored weights."""
    import numpy as np
    import tensorflow as tf

    from estimator_vgg import towers, vgg16, weights

    n = len(list(images.iterdir()))
    prepared = weights.prepare(_synthetic_cfg(images, images, precision).model)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.get_or_create_global_step()
        x = tf.Variable(np.random.default_rng(0).normal(0, 60, (BATCH, 224, 224, 3))
                        .astype(np.float32), trainable=False)
        per_tower, copy_op = towers.tower_weights(["/device:CPU:0"], tf.as_dtype(precision))
        out = vgg16.fc7(x, per_tower[0])
        saver = tf.compat.v1.train.Saver([v for v in tf.compat.v1.global_variables()
                                          if v is not x])
        with tf.compat.v1.Session() as sess:
            sess.run(x.initializer)
            saver.restore(sess, prepared.checkpoint)
            sess.run(tf.compat.v1.local_variables_initializer())
            sess.run(copy_op)
            sess.run(out)  # warm-up: oneDNN picks and builds its kernels
            steps = max(1, n // BATCH)
            start = time.perf_counter()
            for _ in range(steps):
                sess.run(out)
            seconds = time.perf_counter() - start
    return {"images": steps * BATCH, "seconds": seconds}


def job(images: Path, precision: str, dct: bool = False, fast: bool = False) -> dict:
    """The job end to end, as runner.run does it for the command line."""
    import logging

    from estimator_vgg.runner import run

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run(_synthetic_cfg(images, Path(tmp) / "out", precision, dct, fast))
        seconds = time.perf_counter() - start
    assert summary.features == len(list(images.iterdir())), summary
    # Steady state: the images after the first batch over the time after it, i.e. without
    # the fixed start-up (graph, restore, first batch) that a long job amortises.
    steady = (summary.features - BATCH) / max(seconds - summary.first_batch_s, 1e-9)
    return {"images": summary.features, "seconds": seconds,
            "first_batch_s": summary.first_batch_s, "steady_images_per_s": steady}


def seed(images: Path, precision: str) -> dict:
    """The seed-style script: placeholder, PIL one by one, feed_dict, pd.concat, wide CSV."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from PIL import Image

    from estimator_vgg import towers, vgg16, weights

    files = sorted(images.iterdir())
    prepared = weights.prepare(_synthetic_cfg(images, images, "float32").model)
    start = time.perf_counter()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.get_or_create_global_step()
        ph = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        per_tower, _ = towers.tower_weights(["/device:CPU:0"])
        out = vgg16.fc7(ph, per_tower[0])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess, tempfile.TemporaryDirectory() as tmp:
            saver.restore(sess, prepared.checkpoint)
            df = pd.DataFrame()
            for lo in range(0, len(files), BATCH):
                batch = []
                for f in files[lo:lo + BATCH]:
                    im = Image.open(f).convert("RGB")
                    scale = 224 / min(im.size)
                    im = im.resize((max(224, round(im.width * scale)),
                                    max(224, round(im.height * scale))), Image.BILINEAR)
                    left, top = (im.width - 224) // 2, (im.height - 224) // 2
                    a = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32)
                    batch.append(a[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))
                feats = sess.run(out, {ph: np.stack(batch)})
                rows = pd.DataFrame(feats, columns=[f"vgg{i}" for i in range(4096)])
                rows.insert(0, "path", [f.name for f in files[lo:lo + BATCH]])
                df = pd.concat([df, rows], ignore_index=True)
            df.to_csv(Path(tmp) / "features.csv", index=False)
    return {"images": len(files), "seconds": time.perf_counter() - start}


def keras(images: Path, precision: str) -> dict:
    """Keras' VGG16 cut at fc2 with a tf.data pipeline and model.predict (autotune on)."""
    import tensorflow as tf

    from estimator_vgg.weights import synthetic_arrays

    files = sorted(str(f) for f in images.iterdir())
    start = time.perf_counter()
    model = tf.keras.applications.VGG16(weights=None, include_top=True)
    arrays = synthetic_arrays(0, include_top=True)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(list(arrays[layer.name]))
    cut = tf.keras.Model(model.input, model.get_layer("fc2").output)

    def load(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        shape = tf.cast(tf.shape(img)[:2], tf.float32)
        size = tf.cast(tf.round(shape * 224.0 / tf.reduce_min(shape)), tf.int32)
        img = tf.image.resize(img, tf.maximum(size, 224))
        img = tf.image.resize_with_crop_or_pad(img, 224, 224)
        return tf.keras.applications.vgg16.preprocess_input(img)

    ds = tf.data.Dataset.from_tensor_slices(files).map(load, tf.data.AUTOTUNE)
    feats = cut.predict(ds.batch(BATCH).prefetch(tf.data.AUTOTUNE), verbose=0)
    assert feats.shape == (len(files), 4096)
    return {"images": len(files), "seconds": time.perf_counter() - start}


def decode(images: Path, precision: str) -> dict:
    """The job's input pipeline alone (read, decode, resize, preprocess), no model.

    `precision` is abused as the thread count here: decode-1 and decode-2 give the rate of one
    core and of two. A trailing "p" ("1p") measures the plain pipeline, without the bad-file
    handling (header pixel check, dropping failed files, per-part batching), to price it.
    """
    import tensorflow as tf

    from estimator_vgg.input import input_fn
    from estimator_vgg.listing import list_images

    plain = precision.endswith("p")
    threads = int(precision.rstrip("p"))
    cfg = _synthetic_cfg(images, images, "float32")
    cfg = type(cfg)(**{**cfg.__dict__, "input": type(cfg.input)(
        **{**cfg.input.__dict__, "decode_threads": threads,
           "max_pixels": 10 ** 12 if plain else cfg.input.max_pixels})})
    paths = list_images(images, ["jpg"])
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads  # no more cores than asked for
    if plain:
        import estimator_vgg.preprocess as pp
        pp.check_pixels = lambda contents, max_pixels: contents  # no header check
        ds = input_fn(cfg, paths)().with_options(options)
    else:
        sizes = [len(paths[i:i + 1024]) for i in range(0, len(paths), 1024)]
        ds = input_fn(cfg, paths, part_sizes=sizes, skip_bad=True,  # as the job, local files
                      whole_batches=True)().with_options(options)
    start = time.perf_counter()
    count = sum(int(b["image"].shape[0]) for b in ds)
    return {"images": count, "seconds": time.perf_counter() - start}


def jobdct(images: Path, precision: str) -> dict:
    """The job with preprocess.jpeg_dct_scaling: large JPEGs decoded at reduced scale."""
    return job(images, precision, dct=True)


def jobfast(images: Path, precision: str) -> dict:
    """The job with preprocess.fast_decode: crop-window decode and 4x DCT scaling."""
    return job(images, precision, fast=True)


METHODS = {"ceiling": ceiling, "job": job, "jobdct": jobdct, "jobfast": jobfast, "seed": seed,
           "keras": keras, "decode": decode}


def child(method: str, images: str, precision: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = METHODS[method](Path(images), precision)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(method: str, images: Path, precision: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, __file__, "--child", method, str(images), precision],
                       capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{method} {precision} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def print_ratio_table(rates: dict, names, threads, base: str, label: str) -> None:
    """A markdown table of median images/s per (name, threads) in `rates` (lists of rates),
    with each one's ratio to `base` at the same thread count."""
    import statistics
    print("| variant | " + " | ".join(f"{t} thread(s)" for t in threads) + " | "
          + " | ".join(f"vs {label}, {t}" for t in threads) + " |")
    print("| --- |" + " ---: |" * (2 * len(threads)))
    for name in names:
        med = [statistics.median(rates[(name, t)]) for t in threads]
        ref = [statistics.median(rates[(base, t)]) for t in threads]
        print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in med) + " | "
              + " | ".join(f"{m / b:.2f}x" for m, b in zip(med, ref)) + " |")


def machine() -> str:
    from machine import cpu

    import tensorflow as tf
    return (f"{cpu()}; "
            f"python {platform.python_version()}, tensorflow {tf.__version__}; "
            f"threads: TensorFlow defaults (intra/inter-op 0 = all cores), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset (on)')}")


def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48, help="images per measured run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--methods", nargs="+", default=["ceiling", "job", "seed", "keras"])
    ap.add_argument("--memory", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                    help="instead: peak memory of the job (float32) at two image counts")
    ap.add_argument("--decode-threads", type=int,
                    help="input.decode_threads of the jobs (default: the config's default)")
    ap.add_argument("--batch", type=int, default=BATCH,
                    help="images per step for the model, the job and the baselines (default 8)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    BATCH = args.batch
    os.environ["THROUGHPUT_BATCH"] = str(BATCH)  # the children measure with it
    if args.decode_threads:
        os.environ["THROUGHPUT_DECODE_THREADS"] = str(args.decode_threads)
    if args.child:
        return child(*args.child)
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            return memory(Path(tmp), *args.memory)
        images = Path(tmp) / "images"
        make_images(images, args.images)
        runs = [(m, p) for m in args.methods
                for p in (args.precisions if m in ("ceiling", "job", "jobdct", "jobfast") else
                          ["1", "1p", "2", "2p"] if m == "decode" else ["float32"])]
        results = {r: [] for r in runs}
        for rep in range(args.reps):
            for m, p in runs:
                res = measure(m, images, p)
                results[(m, p)].append(res)
                print(f"  rep {rep + 1}: {m:<8}{p:<9} {res['images'] / res['seconds']:6.2f} "
                      f"images/s  peak {res['peak_rss_mb']:.0f} MB", flush=True)
    report(results, args)


def report(results: dict, args) -> None:
    rate = {k: statistics.median(r["images"] / r["seconds"] for r in v)
            for k, v in results.items()}
    mem = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    print(f"\n{args.images} JPEGs, {args.reps} alternated reps, medians; batch {BATCH}, 1 tower")
    print("| method | precision (decode: threads) | images/s | vs its ceiling | peak memory MB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for (m, p), r in rate.items():
        ceil = rate.get(("ceiling", p))
        ratio = f"{r / ceil:.2f}x" if ceil else ""
        print(f"| {m} | {p} | {r:.2f} | {ratio} | {mem[(m, p)]:.0f} |")
    first = [x["first_batch_s"] for (m, _), v in results.items() if m == "job" for x in v]
    jobs = [m for m in ("job", "jobdct", "jobfast") if any(k[0] == m for k in results)]
    if first:
        print(f"job: first batch after {statistics.median(first):.1f} s (median, from start)")
    for (m, p), v in results.items():
        if m in jobs and ("ceiling", p) in rate:
            steady = statistics.median(x["steady_images_per_s"] for x in v)
            print(f"{m} {p} after the first batch: {steady:.2f} images/s, "
                  f"{steady / rate[('ceiling', p)]:.2f}x its ceiling")
    seed_rate = rate.get(("seed", "float32"))
    for m in jobs:
        for p in args.precisions:
            if seed_rate and (m, p) in rate:
                print(f"{m} {p} vs seed-style float32: {rate[(m, p)] / seed_rate:.2f}x")
        if ("keras", "float32") in rate and (m, "float32") in rate:
            print(f"{m} float32 vs keras float32: "
                  f"{rate[(m, 'float32')] / rate[('keras', 'float32')]:.2f}x")


def memory(tmp: Path, small: int, large: int) -> None:
    out = {}
    for n in (small, large):
        images = tmp / f"images_{n}"
        make_images(images, n)
        out[n] = measure("job", images, "float32")
        print(f"job float32, {n} images: peak {out[n]['peak_rss_mb']:.0f} MB, "
              f"{n / out[n]['seconds']:.2f} images/s", flush=True)
    print(f"peak memory {large} vs {small} images: "
          f"{out[large]['peak_rss_mb'] / out[small]['peak_rss_mb']:.3f}x")


if __name__ == "__main__":
    main()
