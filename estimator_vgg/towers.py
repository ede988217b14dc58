"""Tower replication for inference: one copy of the weights per device, the batch fanned out.

`replicate` replaces the loop

    slices = split(pad(batch), n)
    outs = [fn(slices[i], weights[i]) on devices[i] for i in range(n)]
    result = concat(outs)[:len(batch)]

Tower 0 reads the global variables the checkpoint restores; every other tower reads a local,
non-trainable copy on its own device, filled once per session by `copy_op` (run as the
Scaffold's local_init_op, after the restore). A step then moves only input slices in and
output rows out: the weights never cross devices after the session starts.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import tensorflow as tf

from estimator_vgg import vgg16


def tower_weights(devices: Sequence[str], dtype: tf.DType = tf.float32
                  ) -> Tuple[List[vgg16.Weights], tf.Operation]:
    """Variables for each tower on its device, and the op that fills the copies from tower 0.

    In float32, tower 0 computes from the restored variables themselves. In a lower precision
    every tower, tower 0 included, gets a copy cast once per session, so no step pays for a
    cast of the 138M weights.
    """
    with tf.device(devices[0]):
        primary = vgg16.create_variables(vgg16.SCOPE, local=False)
    per_tower = [primary] if dtype == tf.float32 else []
    assigns = []
    for i, dev in enumerate(devices):
        if i == 0 and dtype == tf.float32:
            continue
        with tf.device(dev):
            copy = vgg16.create_variables(f"tower_{i}/{vgg16.SCOPE}", local=True, dtype=dtype)
        with tf.device(dev), tf.name_scope(f"fill_tower_{i}"):
            for name, (k, b) in copy.items():
                src_k, src_b = primary[name]
                # The assign runs on the copy's device: the value crosses once per session.
                for dst, src in ((k, src_k), (b, src_b)):
                    value = src.read_value()
                    if dtype != tf.float32:
                        value = tf.cast(value, dtype)
                    assigns.append(dst.assign(value, read_value=False))
        per_tower.append(copy)
    copy_op = tf.group(*assigns, name="fill_tower_copies")
    return per_tower, copy_op


def pad_to_towers(batch: tf.Tensor, n: int) -> tf.Tensor:
    """Pad rows with zeros up to a multiple of n (at least n), so no tower gets an empty slice.

    oneDNN fails on a convolution over 0 rows, and tf.split needs equal slices.
    """
    rows = tf.shape(batch)[0]
    padded_rows = tf.maximum(n, ((rows + n - 1) // n) * n)
    paddings = tf.concat([[[0, padded_rows - rows]],
                          tf.zeros([tf.rank(batch) - 1, 2], tf.int32)], axis=0)
    return tf.pad(batch, paddings)


def replicate(fn: Callable[[tf.Tensor, vgg16.Weights], tf.Tensor], batch: tf.Tensor,
              devices: Sequence[str], weights: Sequence[vgg16.Weights],
              host: str = "/device:CPU:0") -> tf.Tensor:
    """fn(slice, weights[i]) on devices[i] for contiguous slices of batch; rows come back in order.

    Split and concat stay on the host, so with GPUs each slice is copied straight to its GPU.
    """
    n = len(devices)
    if n == 1:
        with tf.device(devices[0]):
            return fn(batch, weights[0])
    with tf.device(host):
        rows = tf.shape(batch)[0]
        slices = tf.split(pad_to_towers(batch, n), n, axis=0)
    outs = []
    for i, dev in enumerate(devices):
        with tf.device(dev), tf.name_scope(f"tower_{i}"):
            outs.append(fn(slices[i], weights[i]))
    with tf.device(host):
        return tf.concat(outs, axis=0)[:rows]
