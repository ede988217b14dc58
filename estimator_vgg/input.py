"""The Estimator's input_fn: a tf.data pipeline from the sorted file list to batches of
{"image": preprocessed float32 [n, 224, 224, 3], "path": relative path string [n]}.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import tensorflow as tf

from estimator_vgg.config import Config
from estimator_vgg.preprocess import preprocess
from estimator_vgg.quiet import tensorflow_imported

tensorflow_imported()  # TensorFlow sets its logger's level when imported in a notebook (quiet.py)

MAX_RUNS = 64  # runs of Python-stage and TensorFlow-read parts concatenated, at most
IN_FLIGHT_PER_THREAD = 4  # images in flight per decode thread (benchmarks/decode_profile.py); each
# holds a decoded uint8 image, 36 MB for a 12-megapixel photo (more while it is resized)


def input_fn(cfg: Config, paths: Sequence[str], root: Optional[os.PathLike] = None,
             part_sizes: Optional[Sequence[int]] = None, skip_bad: bool = False,
             files: Optional[Sequence[str]] = None, reader=None,
             python_parts: Optional[Sequence[bool]] = None,
             whole_batches: bool = False) -> Callable[[], tf.data.Dataset]:
    """The input_fn for `Estimator.predict` over `paths` (relative to `root`, default input.dir).

    A step takes `devices.batch_size` images per tower; the last batch may be smaller. The
    order of the rows is the order of `paths`. Absolute paths work too (joined, they stay
    themselves), and each one's "path" feature is the string given here.

    part_sizes: consecutive runs of `paths` that are batched on their own, so no batch spans
    two parts and a part's batches do not depend on what came before it (a resumed job then
    computes every part exactly as an uninterrupted one). Default: one part.
    skip_bad: drop images that fail to read, to pass the pixel limit or to decode, instead of
    raising; the caller accounts for the missing paths (a notebook user wants the error).
    files: the local file of each path (default: joined to `root`).
    reader, python_parts: a reader.Reader whose Python stage serves the parts python_parts
    marks (default: all) instead of TensorFlow reading local files.
    whole_batches (with skip_bad, no reader): the fast form for local files; a batch in which
    any image fails is dropped whole (see _whole_batches; parts.py computes such parts again).
    """
    if not paths:
        raise ValueError("input_fn: the list of paths is empty")
    sizes = list(part_sizes) if part_sizes is not None else [len(paths)]
    if sum(sizes) != len(paths) or min(sizes) < 0:
        raise ValueError(f"input_fn: part_sizes {sizes[:5]}... do not add up to {len(paths)}")
    root = str(root if root is not None else cfg.input.dir)
    plan = _Plan(
        files=[os.fsencode(f) for f in (files if files is not None else
                                        (os.path.join(root, p) for p in paths))],
        keys=[p.encode("utf-8", "surrogateescape") for p in paths], sizes=sizes,
        batch=cfg.devices.batch_size * cfg.towers, threads=cfg.input.decode_threads,
        prefetch=cfg.input.prefetch_batches, image=_Image(cfg.preprocess, cfg.input.max_pixels))
    if whole_batches:
        if not skip_bad or reader is not None or (python_parts is not None and any(python_parts)):
            raise ValueError("input_fn: whole_batches is for skip_bad over local files only")
        return _whole_batches(plan)
    modes = [reader is not None] * len(sizes) if python_parts is None else list(python_parts)
    if len(modes) != len(sizes):
        raise ValueError(f"input_fn: {len(modes)} python_parts for {len(sizes)} parts")
    return _by_runs(plan, modes, reader, skip_bad, cfg.preprocess.exif_orientation)


class _Image:
    """Encoded bytes -> the preprocessed image, with the job's preprocess settings."""

    def __init__(self, p, max_pixels: int):
        self.p, self.max_pixels = p, max_pixels

    def __call__(self, contents, orientation=None):
        p = self.p
        return preprocess(contents, p.resize, p.antialias, self.max_pixels, p.jpeg_dct_scaling,
                          p.fast_decode, orientation)


@dataclass
class _Plan:
    """What both forms of the pipeline are made of."""
    files: List[bytes]          # the local file of each entry
    keys: List[bytes]           # its "path" feature
    sizes: List[int]            # the parts
    batch: int                  # images per step (all towers)
    threads: int
    prefetch: int
    image: _Image

    @property
    def starts(self) -> List[int]:
        return [0, *itertools.accumulate(self.sizes)][:-1]


# What the Python stage serves, one image at a time: (key, encoded bytes, EXIF orientation)
SERVED = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32))


def served_part(cfg: Config, generator: Callable, args: tuple = ()) -> tf.data.Dataset:
    """One part served by a Python generator of SERVED tuples, as input_fn builds the Python
    stage's parts: decoded image by image, failed images dropped, batches of
    devices.batch_size x towers in order, the last one shorter (the hook estimator_vgg.Embedder
    feeds its calls through, so its rows are the job's)."""
    image = _Image(cfg.preprocess, cfg.input.max_pixels)
    return _part(tf.data.Dataset.from_generator(generator, args=args, output_signature=SERVED),
                 _load_bytes(image, cfg.preprocess.exif_orientation), True,
                 cfg.input.decode_threads, cfg.devices.batch_size * cfg.towers)


def dataset_options(decode_threads: int) -> tf.data.Options:
    """The tf.data options of the job's input pipeline (a new object each call)."""
    return _options(decode_threads)


def _load_bytes(image: _Image, exif: bool) -> Callable:
    def load_bytes(key, contents, orientation):
        return {"image": image(contents, orientation if exif else None), "path": key}
    return load_bytes


def _part(ds: tf.data.Dataset, load: Callable, skip_bad: bool, threads: int,
          batch: int) -> tf.data.Dataset:
    # More images in flight than threads: in listing order, a slow image (a camera photo)
    # would otherwise hold back the thread that finished the next one, and with
    # ignore_errors between map and batch tf.data cannot fuse them to hide that.
    ds = ds.map(load, deterministic=True, num_parallel_calls=IN_FLIGHT_PER_THREAD * threads)
    return (ds.ignore_errors() if skip_bad else ds).batch(batch)


def _by_runs(plan: _Plan, modes: List[bool], reader, skip_bad: bool,
             exif: bool) -> Callable[[], tf.data.Dataset]:
    """The default form: each part decoded image by image and batched on its own. Runs of
    consecutive parts of one kind (read by TensorFlow, or served by the Python stage) become
    one dataset each, concatenated in order (at most MAX_RUNS: the caller serves all beyond)."""
    runs = [list(g) for _, g in itertools.groupby(range(len(plan.sizes)), key=lambda k: modes[k])]
    if len(runs) > MAX_RUNS:
        raise ValueError(f"input_fn: {len(runs)} runs of parts alternate between the Python "
                         f"stage and TensorFlow, more than {MAX_RUNS}")

    def load(file, key):
        return {"image": plan.image(tf.io.read_file(file)), "path": key}

    def make() -> tf.data.Dataset:
        all_files, all_keys = tf.constant(plan.files), tf.constant(plan.keys)

        def part(start, size, python):
            if python:  # the Python stage's parts pull from one stream, in order
                ds = tf.data.Dataset.from_generator(lambda n: reader.take(int(n)), args=(size,),
                                                    output_signature=SERVED)
                return _part(ds, _load_bytes(plan.image, exif), skip_bad, plan.threads,
                             plan.batch)
            ds = tf.data.Dataset.from_tensor_slices((all_files[start:start + size],
                                                     all_keys[start:start + size]))
            return _part(ds, load, skip_bad, plan.threads, plan.batch)

        ds = None
        for run in runs:
            one = tf.data.Dataset.from_tensor_slices((
                tf.constant([plan.starts[k] for k in run], tf.int64),
                tf.constant([plan.sizes[k] for k in run], tf.int64)))
            one = one.filter(lambda start, size: size > 0).flat_map(
                lambda start, size, python=modes[run[0]]: part(start, size, python))
            ds = one if ds is None else ds.concatenate(one)
        return ds.prefetch(plan.prefetch).with_options(_options(plan.threads))

    return make


def _options(threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Decoding gets input.decode_threads threads of its own, never more, so on a CPU it
    # shares the cores with the model by the number the config names.
    options.threading.private_threadpool_size = threads
    # Fixed parallelism instead of autotune: with autotune on, runs were seen idling for
    # 8-15 s at the end while the iterator's destructor waited on the autotune thread.
    options.autotune.enabled = False
    return options


def _whole_batches(plan: _Plan) -> Callable[[], tf.data.Dataset]:
    """input_fn(whole_batches=True): each part is cut into batches of consecutive entries (its
    last one shorter), decoded with the map and the batch fused, and a batch in which any image
    fails is dropped whole, good images and all; otherwise the batches are those of the default
    form. The caller finds the dropped batches (a batch that does not start where the previous
    one ended) and computes their parts again the default way (whole_batches.py). Where nothing
    fails this decodes as fast as a pipeline with no bad-file handling
    (benchmarks/decode_profile.py, `job` against `plain`).

    Every part is padded to whole batches with a 1x1 JPEG (dropped again before the model), so
    one fused map-and-batch over all entries never mixes two parts in a batch; ignore_errors
    after the batch drops a failed batch whole."""
    from estimator_vgg.preprocess import _TINY_JPEG

    files, keys, batch, image = plan.files, plan.keys, plan.batch, plan.image
    padded_files, padded_keys, pads = [], [], []
    start = 0
    for size in plan.sizes:
        part = slice(start, start + size)
        start += size
        if not size:
            continue
        extra = -size % batch
        padded_files += [*files[part], *[files[part.start]] * extra]  # read, then not used
        padded_keys += [*keys[part], *[b""] * extra]
        pads += [False] * size + [True] * extra

    def load(file, key, pad):
        # Select (v1) on a scalar hands the chosen string on, where tf.where (SelectV2) cost 3%
        # at two threads (benchmarks/decoding.md)
        contents = tf.raw_ops.Select(condition=pad, x=tf.constant(_TINY_JPEG),
                                     y=tf.io.read_file(file))
        return {"image": image(contents), "path": key, "keep": tf.logical_not(pad)}

    def without_pads(b):
        def drop():
            return {"image": tf.boolean_mask(b["image"], b["keep"]),
                    "path": tf.boolean_mask(b["path"], b["keep"])}
        return tf.cond(tf.reduce_all(b["keep"]), lambda: {"image": b["image"],
                                                          "path": b["path"]}, drop)

    def make() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(padded_files),
                                                 tf.constant(padded_keys), tf.constant(pads)))
        ds = ds.map(load, num_parallel_calls=IN_FLIGHT_PER_THREAD * plan.threads,
                    deterministic=True)
        ds = ds.batch(batch).ignore_errors().map(without_pads).prefetch(plan.prefetch)
        return ds.with_options(_options(plan.threads))

    return make
