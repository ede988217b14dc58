"""The independent reference, run in its own process: eager tf.keras.applications.VGG16.

Kept out of the test process because building a Keras model inside a tf.compat.v1 graph (what
an Estimator does) breaks eager Keras models in the same process.

    python tests/keras_side.py save-weights SEED OUT.h5        Keras 2.15 save_weights layout
    python tests/keras_side.py fc7 WEIGHTS.h5 IMAGES.npy OUT.npy [WEIGHTS2.h5 OUT2.npy ...]
    python tests/keras_side.py files WEIGHTS.h5 FOLDER OUT.npy PATH...
        fc7 of image files, preprocessed here without the job's code: TensorFlow's decoder,
        the center_crop policy written out again, Keras' own Caffe preprocess_input
    python tests/keras_side.py options WEIGHTS.h5 FOLDER OUT.npz SPEC.json
        the same for each named way of preprocessing in SPEC ({name: {"paths": [...],
        "resize": "center_crop"|"squash", "antialias": bool, "exif": bool}}): files only
        Pillow opens decoded by Pillow, EXIF orientation applied by Pillow's exif_transpose,
        the resize by tf.image.resize called here; OUT.npz holds one fc7 array per name
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


def fc7(weights: str, images: str, out: str, *more: str) -> None:
    """fc7 of IMAGES under each weights file (one process: TensorFlow imported once)."""
    x = np.load(images)
    for w, o in [(weights, out), *zip(more[::2], more[1::2])]:
        model = _model()
        model.load_weights(w)
        cut = tf.keras.Model(model.input, model.get_layer("fc2").output)
        np.save(o, np.concatenate([cut(x[i:i + 1], training=False).numpy()
                                   for i in range(len(x))]))


def _center_crop_224(rgb: np.ndarray, antialias: bool = True) -> np.ndarray:
    """Shorter side to 224 (bilinear, antialiased unless told, aspect kept, rounded), then the
    central 224x224: the documented policy, written from its description, not from the job's
    code."""
    h, w = rgb.shape[:2]
    s = 224 / min(h, w)
    nh, nw = max(224, int(round(h * s))), max(224, int(round(w * s)))
    img = tf.image.resize(rgb.astype(np.float32), [nh, nw], method="bilinear",
                          antialias=antialias).numpy()
    top, left = (nh - 224) // 2, (nw - 224) // 2
    return img[top:top + 224, left:left + 224]


def _squash_224(rgb: np.ndarray, antialias: bool = True) -> np.ndarray:
    """Both sides to 224 (bilinear, antialiased unless told): the documented squash policy."""
    return tf.image.resize(rgb.astype(np.float32), [224, 224], method="bilinear",
                           antialias=antialias).numpy()


def _decode(path: str, exif: bool) -> np.ndarray:
    """uint8 RGB of an image file: TensorFlow's decoder for what it reads (JPEG, PNG, GIF,
    BMP), Pillow's for the rest (the first page or frame); with `exif`, turned upright by
    Pillow's exif_transpose from the orientation Pillow reads in the file."""
    from PIL import Image, ImageOps

    data = open(path, "rb").read()
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        if im.format not in ("JPEG", "PNG", "GIF", "BMP"):
            return np.asarray(im.convert("RGB"))
    rgb = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    if not exif or orientation == 1:
        return rgb
    im = Image.fromarray(rgb)
    tags = im.getexif()
    tags[0x0112] = orientation
    im.info["exif"] = tags.tobytes()
    return np.asarray(ImageOps.exif_transpose(im))


def options(weights: str, folder: str, out: str, spec: str) -> None:
    import json
    import os

    model = _model()
    model.load_weights(weights)
    cut = tf.keras.Model(model.input, model.get_layer("fc2").output)
    result = {}
    for name, s in json.loads(open(spec).read()).items():
        resize = {"center_crop": _center_crop_224, "squash": _squash_224}[s["resize"]]
        rows = []
        for p in s["paths"]:
            rgb = _decode(os.path.join(folder, p), s["exif"])
            x = tf.keras.applications.vgg16.preprocess_input(resize(rgb, s["antialias"])[None])
            rows.append(cut(x, training=False).numpy()[0])
        result[name] = np.stack(rows)
    np.savez(out, **result)


def files(weights: str, folder: str, out: str, *paths: str) -> None:
    import os

    model = _model()
    model.load_weights(weights)
    cut = tf.keras.Model(model.input, model.get_layer("fc2").output)
    rows = []
    for p in paths:
        data = tf.io.read_file(os.path.join(folder, p))
        rgb = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        x = tf.keras.applications.vgg16.preprocess_input(_center_crop_224(rgb)[None])
        rows.append(cut(x, training=False).numpy()[0])
    np.save(out, np.stack(rows))


if __name__ == "__main__":
    {"save-weights": save_weights, "fc7": fc7, "files": files,
     "options": options}[sys.argv[1]](*sys.argv[2:])
