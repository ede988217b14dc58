"""The VGG16 architecture up to fc7, as one straight-line graph function over explicit variables.

Layer names are Keras' (`block1_conv1` .. `block5_conv3`, `fc1` = fc6, `fc2` = fc7): they are the
contract with every weights file and with the checkpoint. Variables are created by the caller
(see `towers.py`), so each tower can hold its own copy on its own device.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import tensorflow as tf

from estimator_vgg.recipe import FC7_DIM

SCOPE = "vgg16"
POOL5_DIM = 7 * 7 * 512

# (name, kernel shape); the bias has the kernel's last dimension.
CONV_LAYERS: List[Tuple[str, Tuple[int, ...]]] = [
    ("block1_conv1", (3, 3, 3, 64)), ("block1_conv2", (3, 3, 64, 64)),
    ("block2_conv1", (3, 3, 64, 128)), ("block2_conv2", (3, 3, 128, 128)),
    ("block3_conv1", (3, 3, 128, 256)), ("block3_conv2", (3, 3, 256, 256)),
    ("block3_conv3", (3, 3, 256, 256)),
    ("block4_conv1", (3, 3, 256, 512)), ("block4_conv2", (3, 3, 512, 512)),
    ("block4_conv3", (3, 3, 512, 512)),
    ("block5_conv1", (3, 3, 512, 512)), ("block5_conv2", (3, 3, 512, 512)),
    ("block5_conv3", (3, 3, 512, 512)),
]
FC_LAYERS: List[Tuple[str, Tuple[int, ...]]] = [
    ("fc1", (POOL5_DIM, 4096)),  # fc6
    ("fc2", (4096, FC7_DIM)),    # fc7
]
LAYERS = CONV_LAYERS + FC_LAYERS
# The last layer of each block is followed by a 2x2 max pool.
_POOL_AFTER = {"block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"}

Weights = Dict[str, Tuple[tf.Variable, tf.Variable]]


def layer_shapes() -> Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """{layer: (kernel shape, bias shape)} for every layer up to fc7."""
    return {name: (shape, (shape[-1],)) for name, shape in LAYERS}


def create_variables(prefix: str = SCOPE, local: bool = False,
                     dtype: tf.DType = tf.float32) -> Weights:
    """Zero-initialised variables for every layer, named `<prefix>/<layer>/kernel|bias`.

    Global variables (`local=False`) are what the checkpoint restores; local ones are per-tower
    copies filled after the restore. Their initial zeros are never used for prediction: the
    model's init_op refuses to run (see `estimator.py`). The caller sets the device scope.
    """
    collections = ([tf.compat.v1.GraphKeys.LOCAL_VARIABLES] if local
                   else [tf.compat.v1.GraphKeys.GLOBAL_VARIABLES])
    out = {}
    for name, (kshape, bshape) in layer_shapes().items():
        with tf.compat.v1.variable_scope(f"{prefix}/{name}"):
            k = tf.compat.v1.get_variable("kernel", kshape, dtype, tf.zeros_initializer(),
                                          trainable=False, collections=collections,
                                          use_resource=True)
            b = tf.compat.v1.get_variable("bias", bshape, dtype, tf.zeros_initializer(),
                                          trainable=False, collections=collections,
                                          use_resource=True)
        out[name] = (k, b)
    return out


def fc7(images: tf.Tensor, weights: Weights) -> tf.Tensor:
    """Caffe-preprocessed float32 [n, 224, 224, 3] -> fc7 float32 [n, 4096] (after its ReLU).

    Computes in the weights' dtype (float32, bfloat16 or float16); returns float32.
    """
    dtype = weights[CONV_LAYERS[0][0]][0].dtype.base_dtype
    x = tf.cast(images, dtype) if dtype != tf.float32 else images
    for name, _ in CONV_LAYERS:
        k, b = weights[name]
        x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, strides=1, padding="SAME"), b),
                       name=name)
        if name in _POOL_AFTER:
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID",
                                 name=name.split("_")[0] + "_pool")
    x = tf.reshape(x, [-1, POOL5_DIM], name="flatten")  # NHWC order, as Keras' Flatten
    for name, _ in FC_LAYERS:
        k, b = weights[name]
        x = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, k), b), name=name)
    return tf.cast(x, tf.float32) if dtype != tf.float32 else x
