"""A search's images: a query image file embedded as the output's rows were, and a row's image
read again (for a page's thumbnails), both from what the output's manifest records.

    fc7 = embed_file("out/demo", "query.jpg")     # the output's weights and preprocessing
    image = image_source("out/demo", "a/b.jpg")   # a Path, the bytes, or None

Light at import: TensorFlow is imported only to embed a file.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Union

import numpy as np

from estimator_vgg.searcher import SearchError, open_output

log = logging.getLogger(__name__)


def input_of(where):
    """The input section the output was made from, as the readers of sources.py take it
    (storage_options were redacted in the manifest: the libraries' own credentials apply)."""
    from estimator_vgg.sections import DEFAULT_EXTENSIONS, InputConfig, is_uri

    manifest = open_output(where).manifest
    recorded = dict((manifest.config or {}).get("input") or {})
    kw = {f.name: recorded[f.name] for f in dataclasses.fields(InputConfig)
          if f.name in recorded}
    for key in ("dir", "list"):
        if kw.get(key) and not is_uri(kw[key]):
            kw[key] = Path(kw[key])
    if kw.get("dir") is None and not kw.get("list"):
        kw["dir"] = manifest.input_dir
    opts = {k: v for k, v in (kw.get("storage_options") or {}).items() if v != "<redacted>"}
    kw["storage_options"] = opts or None
    kw["extensions"] = tuple(kw.get("extensions") or DEFAULT_EXTENSIONS)
    return InputConfig(**kw)


def image_source(where, path: str) -> Union[Path, bytes, None]:
    """The image of a row's `path`, for the pages' thumbnails: the file under input.dir, or,
    for a list entry, a URI or a tar member, its bytes read again (None, with a warning, when
    they cannot be read). The one place that turns an output's path back into an image."""
    from estimator_vgg import sources
    from estimator_vgg.remote import FetchError, redact
    from estimator_vgg.sections import is_uri

    i = input_of(where)
    if i.list is None and not is_uri(i.dir) and not (i.expand_tars and ".tar/" in path.lower()):
        return Path(i.dir) / path
    try:
        return sources.read_entry(i, path)
    except FetchError as e:
        log.warning("cannot read %s again: %s (%s)", redact(path), e.reason, e.message)
        return None


def embed_file(where, file: Path) -> np.ndarray:
    """fc7 of an image file, with the weights and preprocessing the output at `where` (a
    folder, a URI, an output.Output) was made with."""
    from estimator_vgg.config import load_config

    output = open_output(where)
    out_dir, manifest = output.dir, output.manifest
    c = manifest.config
    precision = c["model"].get("precision", "float32")
    cfg = load_config(
        None, input={"dir": str(Path(file).resolve().parent),
                     "max_pixels": c["input"]["max_pixels"]},
        preprocess=c["preprocess"],
        model=dict({k: c["model"][k] for k in ("weights", "seed", "allow_pickle", "cache_dir")},
                   # float16 needs a GPU; a single query on the CPU uses float32 instead
                   precision={"float16": "float32"}.get(precision, precision)),
        devices={"cpus": 1, "batch_size": 1}, output={"dir": str(out_dir)})
    import tensorflow as tf

    from estimator_vgg import weights
    from estimator_vgg.estimator import build_estimator
    from estimator_vgg.input import input_fn
    from estimator_vgg.probe import classify

    prepared = weights.prepare(cfg.model)
    made_with = manifest.fingerprint.weights_sha256
    if prepared.sha256 != made_with:
        raise SearchError(f"the weights {cfg.model.weights} now have sha256 "
                          f"{prepared.sha256[:12]}, but {out_dir} was made with "
                          f"{made_with[:12]}: the query would not be comparable")
    est = build_estimator(cfg, prepared)
    try:
        rows = list(est.predict(input_fn(cfg, [Path(file).name]), yield_single_examples=False,
                                checkpoint_path=prepared.checkpoint))
    except tf.errors.InvalidArgumentError:
        rows = []
    if not rows:  # the input pipeline dropped it: say why, as the errors table would
        reason, message = classify(cfg.input.dir, Path(file).name, cfg.input.max_pixels,
                                   preprocessing=cfg.preprocess)
        raise SearchError(f"the query image {file} cannot be embedded: {reason}: {message}")
    return rows[0]["fc7"][0]
