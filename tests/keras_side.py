"""The independent reference, run in its own process: eager tf.keras.applications.VGG16.

Kept out of the test process because building a Keras model inside a tf.compat.v1 graph (what
an Estimator does) breaks eager Keras models in the same process.

    python tests/keras_side.py save-weights SEED OUT.h5        Keras 2.15 save_weights layout
    python tests/keras_side.py fc7 WEIGHTS.h5 IMAGES.npy OUT.npy
"""
import sys

import numpy as np
import tensorflow as tf


def _model():
    return tf.keras.applications.VGG16(weights=None, include_top=True)


def save_weights(seed: str, out: str) -> None:
    from estimator_vgg.weights import synthetic_arrays

    arrays = synthetic_arrays(int(seed), include_top=True)
    model = _model()
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(list(arrays[layer.name]))
    model.save_weights(out)


def fc7(weights: str, images: str, out: str) -> None:
    model = _model()
    model.load_weights(weights)
    cut = tf.keras.Model(model.input, model.get_layer("fc2").output)
    x = np.load(images)
    np.save(out, np.concatenate([cut(x[i:i + 1], training=False).numpy()
                                 for i in range(len(x))]))


if __name__ == "__main__":
    {"save-weights": save_weights, "fc7": fc7}[sys.argv[1]](*sys.argv[2:])
