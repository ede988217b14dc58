"""The tf.estimator face of the job: model_fn (VGG16 to fc7 over towers) and the Estimator.

Estimator.predict in TF 2.15 ignores the distribution strategies and RunConfig.device_fn, so the
fan-out over devices happens inside model_fn (see towers.py), and the session config
(devices.py) makes the devices exist. Usage, from a notebook:

    cfg = load_config("configs/demo.yaml")
    est = build_estimator(cfg)
    for p in est.predict(input_fn(cfg, list_images(cfg.input.dir, cfg.input.extensions))):
        p["path"], p["fc7"]
"""
from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

from estimator_vgg import towers, vgg16
from estimator_vgg import weights as weights_mod
from estimator_vgg.config import Config
from estimator_vgg.devices import HOST, check_devices, session_config, tower_devices
from estimator_vgg.quiet import tensorflow_imported

tensorflow_imported()  # TensorFlow sets its logger's level when imported in a notebook (quiet.py)

log = logging.getLogger(__name__)

def model_fn(features, labels, mode, params):
    """VGG16 up to fc7, one tower per device in params["devices"]; PREDICT mode only.

    features: {"image": float32 [n, 224, 224, 3] Caffe-preprocessed, "path": string [n]}.
    predictions: {"fc7": float32 [n, 4096], "path": string [n]}.
    """
    del labels
    if mode != tf.estimator.ModeKeys.PREDICT:
        raise ValueError(f"estimator-vgg's model_fn only predicts (mode {mode!r} requested): "
                         f"it extracts fixed VGG16 features and has no training or evaluation")
    devices = params["devices"]
    dtype = tf.as_dtype(params.get("precision", "float32"))
    per_tower, copy_op = towers.tower_weights(devices, dtype)
    fc7 = towers.replicate(vgg16.fc7, features["image"], devices, per_tower, host=HOST)
    with tf.device(HOST):
        # Restoring the checkpoint skips init_op. Reaching it means there was no checkpoint,
        # and predicting from zero or random weights must never pass for features.
        refuse = tf.raw_ops.Assert(
            condition=tf.constant(False),
            data=["estimator-vgg: no checkpoint was restored, refusing to predict without the "
             "weights. Build the Estimator with build_estimator(cfg), which converts the "
             "configured weights into the model_dir's checkpoint."],
            name="refuse_to_predict_without_checkpoint")
    scaffold = tf.compat.v1.train.Scaffold(init_op=refuse, local_init_op=copy_op)
    return tf.estimator.EstimatorSpec(mode, predictions={"fc7": fc7, "path": features["path"]},
                                      scaffold=scaffold)


def build_estimator(cfg: Config,
                    prepared: Optional[weights_mod.PreparedWeights] = None
                    ) -> tf.estimator.Estimator:
    """An Estimator over the configured devices, restoring the configured weights.

    Checks the devices first, then converts the weights into a cached checkpoint on first use
    (pass `prepared` to skip that step when it was done already).
    """
    check_devices(cfg.devices)
    if prepared is None:
        prepared = weights_mod.prepare(cfg.model)
    run_config = tf.estimator.RunConfig(model_dir=str(prepared.model_dir),
                                        session_config=session_config(cfg.devices))
    return tf.estimator.Estimator(model_fn=model_fn, config=run_config,
                                  params={"devices": tower_devices(cfg.devices),
                                          "precision": cfg.model.precision})
