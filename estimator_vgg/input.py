"""The Estimator's input_fn: a tf.data pipeline from the sorted file list to batches of
{"image": preprocessed float32 [n, 224, 224, 3], "path": relative path string [n]}.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import tensorflow as tf

from estimator_vgg.config import Config
from estimator_vgg.preprocess import preprocess


def input_fn(cfg: Config, paths: Sequence[str], root: Optional[os.PathLike] = None
             ) -> Callable[[], tf.data.Dataset]:
    """The input_fn for `Estimator.predict` over `paths` (relative to `root`, default input.dir).

    A step takes `devices.batch_size` images per tower; the last batch may be smaller. The
    order of the rows is the order of `paths`. Absolute paths work too (joined, they stay
    themselves), and each one's "path" feature is the string given here.
    """
    if not paths:
        raise ValueError("input_fn: the list of paths is empty")
    root = str(root if root is not None else cfg.input.dir)
    files = [os.fsencode(os.path.join(root, p)) for p in paths]
    keys = [p.encode("utf-8", "surrogateescape") for p in paths]
    batch = cfg.devices.batch_size * cfg.towers
    policy, antialias = cfg.preprocess.resize, cfg.preprocess.antialias
    threads, prefetch = cfg.input.decode_threads, cfg.input.prefetch_batches

    def load(file, key):
        return {"image": preprocess(tf.io.read_file(file), policy, antialias), "path": key}

    def make() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((files, keys))
        ds = ds.map(load, num_parallel_calls=threads, deterministic=True)
        ds = ds.batch(batch).prefetch(prefetch)
        options = tf.data.Options()
        options.deterministic = True
        # Fixed parallelism instead of autotune: with autotune on, runs were seen idling for
        # 8-15 s at the end while the iterator's destructor waited on the autotune thread.
        options.autotune.enabled = False
        return ds.with_options(options)

    return make
