"""The job: list the images, prepare the weights, stream Estimator.predict into the writer.

The only module that wires the stages together (listing -> input_fn -> estimator -> writer).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import tensorflow as tf

from estimator_vgg import __version__, preprocess, weights
from estimator_vgg.config import Config
from estimator_vgg.estimator import build_estimator, tower_devices
from estimator_vgg.input import input_fn
from estimator_vgg.listing import list_images
from estimator_vgg.writer import FEATURES, FeatureWriter

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROGRESS_EVERY_S = 10.0


class JobError(RuntimeError):
    """The job cannot go on; the message names the file or setting and what to do."""


@dataclass(frozen=True)
class Summary:
    images: int
    features: int
    seconds: float
    output: Path

    @property
    def images_per_s(self) -> float:
        return self.features / self.seconds if self.seconds else 0.0


def _prepare_output(cfg: Config) -> None:
    out = cfg.output.dir
    features = out / FEATURES
    existing = [p for p in features.iterdir()] if features.is_dir() else []
    if existing:
        if not cfg.output.overwrite:
            raise JobError(f"output.dir {out} already holds features ({len(existing)} files in "
                           f"{features}); choose another output.dir, or set "
                           f"output.overwrite=true to replace them")
        log.info("output.overwrite: removing %s", features)
        shutil.rmtree(features)
        (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _find_bad_image(cfg: Config, paths: List[str], start: int) -> Optional[tuple]:
    """The first path from `start` on that fails to read or decode, with TF's message."""
    root = str(cfg.input.dir)
    for rel in paths[start:]:
        try:
            contents = tf.io.read_file(os.path.join(root, rel))
            preprocess.preprocess(contents, cfg.preprocess.resize, cfg.preprocess.antialias)
        except tf.errors.OpError as e:
            return rel, e.message
    return None


def _versions() -> dict:
    import numpy
    return {"estimator_vgg": __version__, "tensorflow": tf.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def run(cfg: Config) -> Summary:
    """Embed every image under input.dir into <output.dir>/features; return the counts."""
    start = time.time()
    paths = list_images(cfg.input.dir, cfg.input.extensions)
    if not paths:
        raise JobError(f"input.dir {cfg.input.dir} holds no file with an image extension "
                       f"({', '.join(cfg.input.extensions)}); check the folder or "
                       f"input.extensions")
    log.info("found %d images under %s", len(paths), cfg.input.dir)
    _prepare_output(cfg)
    prepared = weights.prepare(cfg.model)
    est = build_estimator(cfg, prepared)
    log.info("towers: %s, %d images per step", ", ".join(tower_devices(cfg.devices)),
             cfg.devices.batch_size * cfg.towers)
    writer = FeatureWriter(cfg.output.dir, cfg.output.format, cfg.output.rows_per_part)
    done = 0
    first_batch_s = None
    last_report = time.time()
    predictions = est.predict(input_fn(cfg, paths), yield_single_examples=False,
                              checkpoint_path=prepared.checkpoint)
    try:
        for batch in predictions:
            got = [p.decode("utf-8", "surrogateescape") for p in batch["path"]]
            expected = paths[done:done + len(got)]
            if got != expected:  # would mean rows mixed up: never write them
                raise JobError(f"internal error: predictions for rows {done}.. came back as "
                               f"{got[:3]}..., expected {expected[:3]}...")
            writer.write(got, batch["fc7"])
            done += len(got)
            now = time.time()
            if first_batch_s is None:
                first_batch_s = now - start
            if now - last_report >= PROGRESS_EVERY_S:
                log.info("embedded %d/%d images (%.1f images/s)", done, len(paths),
                         done / (now - start))
                last_report = now
    except tf.errors.OpError as e:
        bad = _find_bad_image(cfg, paths, done)
        if bad is None:
            raise
        raise JobError(f"{cfg.input.dir / bad[0]}: cannot be read as an image ({bad[1]}). "
                       f"Remove or repair the file, or leave it out of input.dir; "
                       f"{done} images were embedded before it") from None
    writer.close()
    if done != len(paths):
        raise JobError(f"internal error: {done} feature rows for {len(paths)} images")
    seconds = time.time() - start
    manifest = {
        "config": cfg.to_dict(),
        "config_file": str(cfg.source) if cfg.source else None,
        "weights": {"source": prepared.source, "sha256": prepared.sha256,
                    "synthetic": prepared.synthetic},
        "preprocessing": {"resize": cfg.preprocess.resize,
                          "antialias": cfg.preprocess.antialias,
                          "image_size": preprocess.IMAGE_SIZE, "channels": "BGR",
                          "mean_bgr": list(preprocess.CAFFE_BGR_MEAN), "scale": 1.0},
        "counts": {"images": len(paths), "features": done, "parts": writer.parts},
        "timings": {"total_s": round(seconds, 3),
                    "first_batch_s": round(first_batch_s or 0.0, 3)},
        "versions": _versions(),
        "command": sys.argv,
    }
    tmp = cfg.output.dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, cfg.output.dir / MANIFEST)
    return Summary(len(paths), done, seconds, cfg.output.dir)
