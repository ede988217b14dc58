"""What a job would do, without TensorFlow: files by extension, done, to do, devices, weights.

Backs `estimator-vgg CONFIG --dry-run`; imports neither TensorFlow nor the model.
"""
from __future__ import annotations

import os
from collections import Counter

from estimator_vgg import downloads
from estimator_vgg.config import Config
from estimator_vgg.sections import ExecutionConfig, ModelConfig
from estimator_vgg.devices import tensorflow_build, tower_devices
from estimator_vgg import sources
from estimator_vgg.output import Output, read_output_manifest
from estimator_vgg.storage import location

def _weights_text(model_cfg: ModelConfig) -> str:
    w = model_cfg.weights
    if w == "synthetic":
        return f"synthetic (seed {model_cfg.seed}): NOT ImageNet features"
    if w == "imagenet":
        cached = downloads.imagenet_path()
        where = f"cached at {cached}" if cached.is_file() else "downloaded on first use (528 MB)"
        return f"imagenet: Keras' published file, {where}"
    if downloads.is_url(w):
        cached = downloads.url_path(w, model_cfg.cache_dir)
        where = f"cached at {cached}" if cached.is_file() else f"downloaded on first use into {cached}"
        check = (f", sha256 checked ({model_cfg.weights_sha256[:12]}...)"
                 if model_cfg.weights_sha256 else ", no sha256 to check (model.weights_sha256)")
        return f"{downloads.without_query(w)}: {where}{check}"
    return f"{w} ({os.path.getsize(w) / 1e6:.0f} MB)"


def _executor_text(run_cfg: ExecutionConfig, rows_per_part: int, gpus: int, todo: int) -> str:
    if run_cfg.executor == "local":
        return "local (this process)"
    per_shard = rows_per_part * run_cfg.ray.parts_per_shard
    shards = -(-todo // per_shard)
    where = run_cfg.ray.address or "a private local cluster started for the run"
    return (f"ray on {where}: {shards} shards of up to {per_shard} images, each asking for "
            f"{run_cfg.ray.cpus_per_task:g} CPUs and {gpus} GPUs")


def dry_run(cfg: Config) -> str:
    listing = sources.build(cfg.input)  # lists folders, prefixes and tar headers; reads no image
    by_ext = Counter(os.path.splitext(p.split("?", 1)[0])[1].lower().lstrip(".") or "none"
                     for p in listing.keys)
    first, repeats = Counter(), Counter()
    loc = location(cfg.output.dir, cfg.output)
    manifest = read_output_manifest(loc)
    state = "new output"
    if cfg.output.overwrite:
        state = "output.overwrite: existing features, errors, manifest and index would be deleted"
    elif manifest is not None:
        first, repeats = sources.committed_counts(Output(loc, manifest))
        state = (f"resuming ({len(manifest.parts)} parts committed; weights and "
                 f"preprocessing are checked against the manifest when the job starts)")
    todo = len(sources.todo(listing, first, repeats))
    devices = tower_devices(cfg.devices)
    gpus = len(cfg.devices.gpus or ())
    lines = [
        "dry run: nothing is read, converted or written",
        f"  source       {sources.describe(cfg.input, listing)}",
        f"  entries      {len(listing.keys)}  (" + ", ".join(f"{e}: {n}" for e, n in
                                                       sorted(by_ext.items())) + ")",
        f"  done         {len(listing.keys) - todo}",
        f"  to do        {todo}",
        f"  output       {loc} ({cfg.output.format}): {state}",
        f"  devices      {', '.join(devices)} ({cfg.devices.batch_size} images per tower per "
        f"step; GPUs are checked when the job starts)",
        f"  tensorflow   {tensorflow_build()}",
        f"  weights      {_weights_text(cfg.model)}",
        f"  preprocess   {cfg.preprocess.resize}, antialias {cfg.preprocess.antialias}"
        f"{', JPEG DCT scaling' if cfg.preprocess.jpeg_dct_scaling else ''}"
        f"{', fast decode' if cfg.preprocess.fast_decode else ''}"
        f"{', EXIF orientation' if cfg.preprocess.exif_orientation else ''}; other formats: "
        f"{cfg.input.fallback_decoder}",
        f"  executor     {_executor_text(cfg.run, cfg.output.rows_per_part, gpus, todo)}",
    ]
    return "\n".join(lines)
