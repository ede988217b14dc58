"""The Estimator's input_fn: a tf.data pipeline from the sorted file list to batches of
{"image": preprocessed float32 [n, 224, 224, 3], "path": relative path string [n]}.
"""
from __future__ import annotations

import itertools
import os
from typing import Callable, Optional, Sequence

import tensorflow as tf

from estimator_vgg.config import Config
from estimator_vgg.preprocess import preprocess

MAX_RUNS = 64  # runs of Python-stage and TensorFlow-read parts concatenated, at most
IN_FLIGHT_PER_THREAD = 4  # images in flight per decode thread (benchmarks/decode_profile.py); each
# holds a decoded uint8 image, 36 MB for a 12-megapixel photo (more while it is resized)


def input_fn(cfg: Config, paths: Sequence[str], root: Optional[os.PathLike] = None,
             part_sizes: Optional[Sequence[int]] = None, skip_bad: bool = False,
             files: Optional[Sequence[str]] = None, reader=None,
             python_parts: Optional[Sequence[bool]] = None) -> Callable[[], tf.data.Dataset]:
    """The input_fn for `Estimator.predict` over `paths` (relative to `root`, default input.dir).

    A step takes `devices.batch_size` images per tower; the last batch may be smaller. The
    order of the rows is the order of `paths`. Absolute paths work too (joined, they stay
    themselves), and each one's "path" feature is the string given here.

    part_sizes: consecutive runs of `paths` that are batched on their own, so no batch spans
    two parts and a part's batches do not depend on what came before it (a resumed job then
    computes every part exactly as an uninterrupted one). Default: one part.
    skip_bad: drop images that fail to read, to pass the pixel limit or to decode, instead of
    raising. The caller must account for the missing paths (the runner records each one in
    the errors table); a notebook user wants the error, hence the default.
    files: the local file of each path (default: joined to `root`).
    reader: a reader.Reader: the bytes of the parts it serves come from its Python stage
    (remote objects, tar members, Pillow, EXIF) instead of TensorFlow reading local files.
    python_parts: which parts it serves (its entries are those parts' paths, in order);
    default: every part when there is a reader.
    """
    if not paths:
        raise ValueError("input_fn: the list of paths is empty")
    root = str(root if root is not None else cfg.input.dir)
    sizes = list(part_sizes) if part_sizes is not None else [len(paths)]
    if sum(sizes) != len(paths) or min(sizes) < 0:
        raise ValueError(f"input_fn: part_sizes {sizes[:5]}... do not add up to {len(paths)}")
    files = [os.fsencode(f) for f in (files if files is not None else
                                      (os.path.join(root, p) for p in paths))]
    keys = [p.encode("utf-8", "surrogateescape") for p in paths]
    starts = [0, *itertools.accumulate(sizes)][:-1]
    batch = cfg.devices.batch_size * cfg.towers
    i = cfg.input
    policy, antialias, max_pixels = cfg.preprocess.resize, cfg.preprocess.antialias, i.max_pixels
    dct, fast = cfg.preprocess.jpeg_dct_scaling, cfg.preprocess.fast_decode
    threads, prefetch = i.decode_threads, i.prefetch_batches

    exif = cfg.preprocess.exif_orientation

    def load(file, key):
        image = preprocess(tf.io.read_file(file), policy, antialias, max_pixels, dct, fast)
        return {"image": image, "path": key}

    def load_bytes(key, contents, orientation):
        image = preprocess(contents, policy, antialias, max_pixels, dct, fast,
                           orientation if exif else None)
        return {"image": image, "path": key}

    read = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
            tf.TensorSpec([], tf.int32))

    # Which parts the Python stage serves: runs of consecutive parts of one kind become one
    # dataset each, concatenated in order (at most MAX_RUNS: the caller serves all beyond).
    modes = [reader is not None] * len(sizes) if python_parts is None else list(python_parts)
    if len(modes) != len(sizes):
        raise ValueError(f"input_fn: {len(modes)} python_parts for {len(sizes)} parts")
    runs = [list(g) for _, g in itertools.groupby(range(len(sizes)), key=lambda k: modes[k])]
    if len(runs) > MAX_RUNS:
        raise ValueError(f"input_fn: {len(runs)} runs of parts alternate between the Python "
                         f"stage and TensorFlow, more than {MAX_RUNS}")

    def make() -> tf.data.Dataset:
        all_files = tf.constant(files)
        all_keys = tf.constant(keys)

        def part(start, size, python):
            if python:  # the Python stage's parts pull from one stream, in order
                ds = tf.data.Dataset.from_generator(lambda n: reader.take(int(n)), args=(size,),
                                                    output_signature=read)
                fn = load_bytes
            else:
                ds = tf.data.Dataset.from_tensor_slices((all_files[start:start + size],
                                                         all_keys[start:start + size]))
                fn = load
            # More images in flight than threads: in listing order, a slow image (a camera
            # photo) would otherwise hold back the thread that finished the next one, and
            # with ignore_errors between map and batch tf.data cannot fuse them to hide that.
            ds = ds.map(fn, num_parallel_calls=IN_FLIGHT_PER_THREAD * threads,
                        deterministic=True)
            if skip_bad:
                ds = ds.ignore_errors()
            return ds.batch(batch)

        ds = None
        for run in runs:
            python = modes[run[0]]
            one = tf.data.Dataset.from_tensor_slices((
                tf.constant([starts[k] for k in run], tf.int64),
                tf.constant([sizes[k] for k in run], tf.int64)))
            one = one.filter(lambda start, size: size > 0).flat_map(
                lambda start, size, python=python: part(start, size, python))
            ds = one if ds is None else ds.concatenate(one)
        ds = ds.prefetch(prefetch)
        options = tf.data.Options()
        options.deterministic = True
        # Decoding gets input.decode_threads threads of its own, never more, so on a CPU it
        # shares the cores with the model by the number the config names.
        options.threading.private_threadpool_size = threads
        # Fixed parallelism instead of autotune: with autotune on, runs were seen idling for
        # 8-15 s at the end while the iterator's destructor waited on the autotune thread.
        options.autotune.enabled = False
        return ds.with_options(options)

    return make
