"""Image bytes to VGG16 input: decode, to RGB, the named resize policy, Caffe preprocessing.

Pure TensorFlow functions with no state; they run inside tf.data and in tests alone.
The constants (recipe.py) are those of the Caffe-trained VGG16 weights (Keras, tensorflow-vgg):
RGB 0..255 reordered to BGR, minus the ImageNet channel means, no scaling. recipe.py also names
this recipe for the outputs' fingerprints: change what happens here, bump it there.
"""
from __future__ import annotations

import tensorflow as tf

from estimator_vgg.recipe import CAFFE_BGR_MEAN, IMAGE_SIZE


def header_size(contents: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] claimed by a JPEG/PNG/GIF/BMP header, read without decoding.

    [-1, -1] for other formats (the decoder then refuses them). A JPEG with a broken header
    raises, as its decode would.
    """
    head = tf.strings.substr(contents, 0, 32)
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * 32)]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def be(i, n):  # big-endian unsigned int of n bytes at offset i
        v = tf.constant(0, tf.int64)
        for k in range(n):
            v = v * 256 + b[i + k]
        return v

    def le(i, n):
        v = tf.constant(0, tf.int64)
        for k in reversed(range(n)):
            v = v * 256 + b[i + k]
        return v

    def le_int32(i):
        v = le(i, 4)
        return tf.where(v >= 2 ** 31, v - 2 ** 32, v)

    is_png = tf.reduce_all(tf.equal(b[:4], [137, 80, 78, 71]))
    is_gif = tf.reduce_all(tf.equal(b[:3], [71, 73, 70]))
    is_bmp = tf.reduce_all(tf.equal(b[:2], [66, 77]))
    is_jpeg = tf.reduce_all(tf.equal(b[:2], [255, 216]))
    unknown = tf.constant([-1, -1], tf.int64)
    return tf.case([
        (is_png, lambda: tf.stack([be(20, 4), be(16, 4)])),
        (is_gif, lambda: tf.stack([le(8, 2), le(6, 2)])),
        (is_bmp, lambda: tf.stack([tf.abs(le_int32(22)), tf.abs(le_int32(18))])),
        (is_jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(contents)[:2], tf.int64)),
    ], default=lambda: unknown, exclusive=True)


def check_pixels(contents: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`contents`, after asserting that its header claims at most `max_pixels` pixels.

    Runs before decoding, so a small file claiming 40000x40000 never allocates the image.
    """
    hw = header_size(contents)
    ok = tf.debugging.assert_less_equal(
        hw[0] * hw[1], tf.constant(max_pixels, tf.int64),
        message=f"too_large: the header claims more than {max_pixels} pixels")
    with tf.control_dependencies([ok]):
        return tf.identity(contents)


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3].

    Grayscale is repeated to three channels and alpha is dropped (as PIL's convert("RGB")
    does); an animated GIF gives its first frame.
    """
    img = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg can decode at, by DCT scaling


def dct_ratio(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Index into DCT_RATIOS of the largest ratio that keeps the shorter side >= 448.

    Both resize policies shrink to 224 on the shorter side (center_crop) or on each side
    (squash). Decoding at 1/r while min(h, w) / r stays at least twice that leaves the last
    2x or more of the reduction to the antialiased resize, which keeps fc7 within a cosine
    similarity of 0.9995 of a full decode (benchmarks/precision_fidelity.py --dct); letting
    the DCT go down to 224 itself was measured at 0.997. So photos of 896 pixels and more on
    the shorter side are decoded at 1/2, 1/4 or 1/8.
    """
    short = tf.minimum(height, width)
    ok = [tf.cast(short // r >= 2 * IMAGE_SIZE, tf.int32) for r in DCT_RATIOS[1:]]
    return tf.add_n(ok)  # ratios are nested: 8 fits => 4 and 2 fit


def decode_rgb_scaled(contents: tf.Tensor) -> tf.Tensor:
    """decode_rgb, except that a large JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (libjpeg's scaled IDCT), which skips most of the decoding work and of the resize.
    The pixels differ slightly from a full decode followed by the antialiased resize:
    benchmarks/precision_fidelity.py --dct measures what it does to fc7."""
    is_jpeg = tf.io.is_jpeg(contents)  # the same test decode_image makes (3 magic bytes)

    def jpeg():
        hw = tf.io.extract_jpeg_shape(contents)
        index = dct_ratio(hw[0], hw[1])
        branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r)
                    for r in DCT_RATIOS]
        return tf.switch_case(index, branches)

    img = tf.cond(is_jpeg, jpeg, lambda: decode_rgb(contents))
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


def preprocess(contents: tf.Tensor, policy: str, antialias: bool = True,
               max_pixels: int = 0, jpeg_dct_scaling: bool = False) -> tf.Tensor:
    """Encoded image bytes -> float32 [224, 224, 3] ready for VGG16.

    With max_pixels > 0, an image whose header claims more pixels is refused before decoding.
    With jpeg_dct_scaling, large JPEGs are decoded at reduced scale (decode_rgb_scaled).
    """
    if max_pixels > 0:
        contents = check_pixels(contents, max_pixels)
    decoded = decode_rgb_scaled(contents) if jpeg_dct_scaling else decode_rgb(contents)
    return caffe_preprocess(resize(decoded, policy, antialias))
