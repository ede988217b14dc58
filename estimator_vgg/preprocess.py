"""Image bytes to VGG16 input: decode, to RGB, the named resize policy, Caffe preprocessing.

Pure TensorFlow functions with no state; they run inside tf.data and in tests alone.
The constants are those of the Caffe-trained VGG16 weights (Keras, tensorflow-vgg):
RGB 0..255 reordered to BGR, minus the ImageNet channel means, no scaling.
"""
from __future__ import annotations

import tensorflow as tf

IMAGE_SIZE = 224
# ImageNet means in B, G, R order, as subtracted by the Caffe-derived VGG16 weights.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3].

    Grayscale is repeated to three channels and alpha is dropped (as PIL's convert("RGB")
    does); an animated GIF gives its first frame.
    """
    img = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def resize(image: tf.Tensor, policy: str, antialias: bool = True) -> tf.Tensor:
    """uint8 or float [h, w, 3] -> float32 [224, 224, 3] by the named policy.

    `center_crop`: scale so the shorter side is 224 (aspect kept), then take the central
    224x224. `squash`: scale both sides to 224.
    """
    image = tf.cast(image, tf.float32)
    if policy == "squash":
        out = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear",
                              antialias=antialias)
    elif policy == "center_crop":
        shape = tf.shape(image)
        h = tf.cast(shape[0], tf.float64)
        w = tf.cast(shape[1], tf.float64)
        scale = IMAGE_SIZE / tf.minimum(h, w)
        # max() guards the shorter side against rounding below 224.
        new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), IMAGE_SIZE)
        new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), IMAGE_SIZE)
        out = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear",
                              antialias=antialias)
        top = (new_h - IMAGE_SIZE) // 2
        left = (new_w - IMAGE_SIZE) // 2
        out = out[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE, :]
    else:
        raise ValueError(f"unknown resize policy {policy!r}; use center_crop or squash")
    out.set_shape([IMAGE_SIZE, IMAGE_SIZE, 3])
    return out


def caffe_preprocess(rgb: tf.Tensor) -> tf.Tensor:
    """float RGB 0..255 [..., 3] -> BGR minus the ImageNet means (the weights' input contract)."""
    bgr = tf.reverse(tf.cast(rgb, tf.float32), axis=[-1])
    return bgr - tf.constant(CAFFE_BGR_MEAN, dtype=tf.float32)


def preprocess(contents: tf.Tensor, policy: str, antialias: bool = True) -> tf.Tensor:
    """Encoded image bytes -> float32 [224, 224, 3] ready for VGG16."""
    return caffe_preprocess(resize(decode_rgb(contents), policy, antialias))
