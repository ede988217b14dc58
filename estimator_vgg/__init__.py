"""estimator-vgg: VGG16 fc7 features for large image collections, as a tf.estimator job.

    from estimator_vgg import load_config, build_estimator, input_fn, list_images
    cfg = load_config("configs/demo.yaml")
    est = build_estimator(cfg)
    for p in est.predict(input_fn(cfg, list_images(cfg.input.dir, cfg.input.extensions))):
        p["path"], p["fc7"]

TensorFlow is imported only when a name that needs it is first used, so the config and the
listing stay light.
"""
__version__ = "0.1.0"

_LAZY = {
    "load_config": "estimator_vgg.config",
    "Config": "estimator_vgg.config",
    "ConfigError": "estimator_vgg.config",
    "list_images": "estimator_vgg.listing",
    "build_estimator": "estimator_vgg.estimator",
    "model_fn": "estimator_vgg.estimator",
    "input_fn": "estimator_vgg.input",
    "run": "estimator_vgg.runner",
    "read_features": "estimator_vgg.writer",
    "iter_parts": "estimator_vgg.writer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'estimator_vgg' has no attribute {name!r}")
