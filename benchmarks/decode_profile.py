"""Where the input pipeline's time goes: images/s of each piece of the job's decode path, alone
and together, at 1 and 2 threads, alternated rep by rep in one process.

    .venv/bin/python benchmarks/decode_profile.py [--images 192] [--reps 3] [--threads 1 2]

Variants (each a tf.data pipeline over the same generated JPEGs, no model):
  plain      read, decode (decode_image), resize (center_crop, antialias), Caffe step
  +check     plain with the header pixel check before decoding (preprocess.check_pixels)
  +ignore    plain with ignore_errors() after the map (failed files dropped)
  +parts     plain cut per output part (flat_map over parts of 64, batches within a part)
  job        the job's own input_fn for local files (skip_bad=True, whole_batches=True,
             parts of 1024): the check, per-part batches, a batch with a failed image dropped
             whole (parts.py computes that part again image by image)
  job-refill the default form (what the job uses for the Python stage and for parts that
             lost a batch): failed images dropped one by one, batches refilled
  job-fast   the job's input_fn with preprocess.fast_decode (when the key exists)
  jpeg, jpeg-in-case, jpeg-in-cond
             the fast path's JPEG work alone (preprocess.center_crop_jpeg, the Caffe step),
             and the same work held by a tf.switch_case or a tf.cond whose other branch is
             never taken: what a functional branch costs the work it holds, inside tf.data
The images are made by throughput.py's make_images (10% camera-size photos).

    .venv/bin/python benchmarks/decode_profile.py --scales

--scales: what DCT scaling can save on the camera-size photos of that mix (shorter side 1500
and more): ms per image, one thread, of tf.io.decode_jpeg at ratio 1, 2, 4 and 8 and of the
fast path's windowed decode and resize (preprocess.center_crop_jpeg), each a tf.function.

    .venv/bin/python benchmarks/decode_profile.py --resize

--resize: what the antialiased resize onto 224x224 costs beside decoding, per window shape:
ms per image, one thread, of the resize of a batch of 16 uint8 images of that shape by the
ScaleAndTranslate op alone and by preprocess.scale_and_translate (the same op as two vertical
passes, equal to the bit: what both decode paths run), and of tf.io.decode_jpeg of a
quality-90 photo of that shape.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _pipelines(images: Path, threads: int):
    import tensorflow as tf

    from estimator_vgg import preprocess as pp
    from estimator_vgg.config import load_config
    from estimator_vgg.input import input_fn
    from estimator_vgg.listing import list_images

    paths = list_images(images, ["jpg"])
    files = [str(images / p) for p in paths]
    cfg = load_config(None, input={"dir": str(images), "decode_threads": threads},
                      output={"dir": str(images.parent / "out")},
                      model={"weights": "synthetic"}, devices={"batch_size": 8})

    def plain(contents, check=False):
        if check:
            contents = pp.check_pixels(contents, cfg.input.max_pixels)
        return pp.caffe_preprocess(pp.resize(pp.decode_rgb(contents), "center_crop", True))

    def jpeg(contents, held=None):  # held: "case" or "cond", the index/predicate constant
        def work():
            return pp.caffe_preprocess(pp.center_crop_jpeg(contents))
        if held == "case":
            return tf.switch_case(tf.strings.length(contents) * 0, [work, work])
        if held == "cond":
            return tf.cond(tf.strings.length(contents) > 0, work, work)
        return work()

    def simple(check=False, ignore=False, parts=None, fn=None):
        def one(ds):
            decode = fn or (lambda c: plain(c, check))
            ds = ds.map(lambda f: decode(tf.io.read_file(f)), num_parallel_calls=threads,
                        deterministic=True)
            return (ds.ignore_errors() if ignore else ds).batch(8)
        if parts:
            starts = tf.constant(list(range(0, len(files), parts)), tf.int64)
            all_files = tf.constant(files)
            ds = tf.data.Dataset.from_tensor_slices(starts).flat_map(
                lambda s: one(tf.data.Dataset.from_tensor_slices(all_files[s:s + parts])))
        else:
            ds = one(tf.data.Dataset.from_tensor_slices(files))
        return ds.prefetch(2)

    sizes = [len(paths[i:i + 1024]) for i in range(0, len(paths), 1024)]
    out = {
        "plain": lambda: simple(),
        "+check": lambda: simple(check=True),
        "+ignore": lambda: simple(ignore=True),
        "+parts": lambda: simple(parts=64),
        "job": lambda: input_fn(cfg, paths, part_sizes=sizes, skip_bad=True,
                                whole_batches=True)(),
        "job-refill": lambda: input_fn(cfg, paths, part_sizes=sizes, skip_bad=True)(),
    }
    if hasattr(cfg.preprocess, "fast_decode"):
        fast = load_config(None, input={"dir": str(images), "decode_threads": threads},
                           output={"dir": str(images.parent / "out")},
                           model={"weights": "synthetic"}, devices={"batch_size": 8},
                           preprocess={"fast_decode": True})
        out["job-fast"] = lambda: input_fn(fast, paths, part_sizes=sizes, skip_bad=True,
                                           whole_batches=True)()
        for held in (None, "case", "cond"):
            out["jpeg" + (f"-in-{held}" if held else "")] = (
                lambda held=held: simple(fn=lambda c: jpeg(c, held)))
    try:  # the same local files through the Python stage (what remote entries, tar members,
        # Pillow and EXIF go through; a local folder takes it only when one of those is needed)
        from estimator_vgg.reader import Reader
        from estimator_vgg.sources import Where

        def python_stage():
            reader = Reader(cfg.input, [(p, Where(f)) for p, f in zip(paths, files)], {})
            return input_fn(cfg, paths, part_sizes=sizes, skip_bad=True, reader=reader)()
        out["job-python"] = python_stage
    except ImportError:  # a release before the Python stage
        pass
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads  # no more cores than asked for
    options.autotune.enabled = False
    return {k: (lambda f=f: f().with_options(options)) for k, f in out.items()}


def _rate(make) -> float:
    ds = make()
    start = time.perf_counter()
    n = sum(int(b["image"].shape[0]) if isinstance(b, dict) else int(b.shape[0]) for b in ds)
    return n / (time.perf_counter() - start)


def _scales(images: Path) -> None:
    import tensorflow as tf

    from estimator_vgg import preprocess as pp

    data = [tf.constant(p.read_bytes()) for p in sorted(images.glob("*.jpg"))]
    camera = [d for d in data if min(tf.io.extract_jpeg_shape(d).numpy()[:2]) >= 1500]
    steps = {f"decode_jpeg ratio {r}": tf.function(
        lambda c, r=r: tf.io.decode_jpeg(c, channels=3, ratio=r)) for r in pp.DCT_RATIOS}
    steps["fast path (window, DCT to 896, resize)"] = tf.function(pp.center_crop_jpeg)
    print(f"{len(camera)} camera-size JPEGs of {len(data)}; ms per image, one thread (mean of 3)")
    for name, f in steps.items():
        for c in camera:  # trace and warm up
            f(c)
        times = []
        for _ in range(3):
            for c in camera:
                start = time.perf_counter()
                f(c)
                times.append(time.perf_counter() - start)
        print(f"| {name} | {1e3 * statistics.mean(times):.2f} |")


def _resize_costs() -> None:
    import numpy as np
    import tensorflow as tf

    from estimator_vgg import preprocess as pp

    photo = tf.io.decode_image(tf.io.read_file(str(ROOT / "demo_images" / "chelsea_cat.JPG")),
                               channels=3, expand_animations=False)

    # The squash policy's resize, as tf.image.resize runs it (ScaleAndTranslate alone, as this
    # project did before) and as the job runs it (preprocess.resize: two vertical passes)
    def op(x):
        return tf.image.resize(x, [224, 224], antialias=True)

    def two_pass(x):
        return tf.stack([pp.resize(x[i], "squash") for i in range(16)])  # unrolled

    steps = [(tf.function(op), 16), (tf.function(two_pass), 16),
             (tf.function(lambda c: tf.io.decode_jpeg(c, channels=3)), 1)]
    print("ms per image, one thread (best of 3): | window | ScaleAndTranslate to 224x224 "
          "| two vertical passes (the job's) | decode_jpeg |")
    for h, w in [(224, 224), (375, 375), (1200, 224), (224, 1200), (1200, 1200)]:
        img = tf.cast(tf.clip_by_value(tf.image.resize(photo, [h, w]), 0, 255), tf.uint8)
        batch = tf.constant(np.repeat(img.numpy()[None], 16, axis=0))
        data = tf.io.encode_jpeg(img, quality=90)
        costs = []
        for f, n in steps:
            arg = batch if n == 16 else data
            f(arg)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(16 // n):
                    f(arg).numpy()
                best = min(best, (time.perf_counter() - start) / 16)
            costs.append(best)
        print(f"| {h}x{w} | " + " | ".join(f"{1e3 * c:.2f}" for c in costs) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", help="variants to run (default: all)")
    ap.add_argument("--scales", action="store_true",
                    help="decode time of the camera-size photos at each DCT scale instead")
    ap.add_argument("--resize", action="store_true",
                    help="the resize's cost beside the decode's, per window shape, instead")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from throughput import machine, make_images, print_ratio_table

    if args.scales or args.resize:  # one thread, set before TensorFlow starts
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"# {machine()}")
    if args.resize:
        _resize_costs()
        return
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        make_images(images, args.images)
        if args.scales:
            _scales(images)
            return
        rates: dict = {}
        for threads in args.threads:
            pipes = _pipelines(images, threads)
            names = [n for n in pipes if not args.only or n in args.only]
            _rate(pipes[names[0]])  # warm-up: page cache, kernels
            for rep in range(args.reps):
                for name in names:
                    r = _rate(pipes[name])
                    rates.setdefault((name, threads), []).append(r)
                    print(f"  rep {rep + 1}: {threads} thread(s) {name:<9} {r:7.1f} images/s",
                          flush=True)
    print(f"\n{args.images} JPEGs, {args.reps} alternated reps, medians")
    print_ratio_table(rates, dict.fromkeys(n for n, _ in rates), args.threads, "plain", "plain")

if __name__ == "__main__":
    main()
