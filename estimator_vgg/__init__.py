"""estimator-vgg: VGG16 fc7 features for large image collections, as a tf.estimator job.

    from estimator_vgg import load_config, build_estimator, input_fn, list_images, Embedder
    cfg = load_config("configs/demo.yaml")
    est = build_estimator(cfg)
    for p in est.predict(input_fn(cfg, list_images(cfg.input.dir, cfg.input.extensions))):
        p["path"], p["fc7"]
    with Embedder(cfg) as emb:     # one predict() kept open: call after call, warm
        fc7 = emb.embed(paths_uris_bytes_arrays_or_pil_images)

The light-module rule, stated once: the modules in LIGHT_MODULES never import TensorFlow (or
anything that does) at import time, so `--dry-run`, the config checks, the readers of an output
and their tests start in milliseconds. What both sides need lives in a light module that the
heavy ones import (recipe.py: the preprocessing recipe and fc7's width; faults.py: the crash
hook; devices.py: device names, importing TensorFlow only inside the functions that ask it),
never as a copy. A test imports each light module alone and checks that TensorFlow stayed out.
The names below are imported only when first used, for the same reason.

Importing the package quiets TensorFlow's start-up and deprecation chatter before TensorFlow is
first imported, unless ESTIMATOR_VGG_VERBOSE=1 (what the CLI's -v sets): quiet.py says how.
"""
__version__ = "0.1.0"

from estimator_vgg import quiet as _quiet

_quiet.quiet_tensorflow()

LIGHT_MODULES = ("accounting", "budget", "compare", "config", "devices", "downloads",
                 "embed_items", "embedder", "exact", "faults", "golden", "index", "index_files",
                 "index_search", "input_wait", "job", "listing", "manifest", "output", "page",
                 "parquet_layout", "plan", "probe", "progress", "query", "quiet", "reader",
                 "recipe", "remote", "search", "searcher", "sections", "sources", "store",
                 "testing", "whole_batches", "writer")

_LAZY = {
    "load_config": "estimator_vgg.config",
    "Config": "estimator_vgg.config",
    "ConfigError": "estimator_vgg.config",
    "list_images": "estimator_vgg.listing",
    "build_estimator": "estimator_vgg.estimator",
    "model_fn": "estimator_vgg.estimator",
    "input_fn": "estimator_vgg.input",
    "run": "estimator_vgg.runner",
    "read_features": "estimator_vgg.output",
    "iter_parts": "estimator_vgg.output",
    "Embedder": "estimator_vgg.embedder",
    "EmbedError": "estimator_vgg.embedder",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        _quiet.before_tensorflow()   # a tensorflow logger level set since the import is kept
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'estimator_vgg' has no attribute {name!r}")
