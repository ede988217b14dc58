"""Image bytes to VGG16 input: decode, to RGB, the named resize policy, Caffe preprocessing.

Pure TensorFlow functions with no state; they run inside tf.data and in tests alone.
The constants (recipe.py) are those of the Caffe-trained VGG16 weights (Keras, tensorflow-vgg):
RGB 0..255 reordered to BGR, minus the ImageNet channel means, no scaling. recipe.py also names
this recipe for the outputs' fingerprints: change what happens here, bump it there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from estimator_vgg.recipe import CAFFE_BGR_MEAN, IMAGE_SIZE


# Header fields read without decoding, as (offset, byte weights): the first four bytes (the
# magic), then (height, width) of PNG (big-endian u32 at 20 and 16), GIF (little-endian u16 at
# 8 and 6) and BMP (little-endian i32 at 22 and 18; a negative height means top-down rows).
_FIELDS = [(0, (2 ** 24, 2 ** 16, 2 ** 8, 1)),
           (20, (2 ** 24, 2 ** 16, 2 ** 8, 1)), (16, (2 ** 24, 2 ** 16, 2 ** 8, 1)),
           (8, (1, 2 ** 8, 0, 0)), (6, (1, 2 ** 8, 0, 0)),
           (22, (1, 2 ** 8, 2 ** 16, 2 ** 24)), (18, (1, 2 ** 8, 2 ** 16, 2 ** 24))]
_FIELD_BYTES = [[off + k for k in range(4)] for off, _ in _FIELDS]
_FIELD_WEIGHTS = [list(w) for _, w in _FIELDS]
# A 1x1 JPEG: what extract_jpeg_shape reads when the file is no JPEG, so no branch is needed.
_TINY_JPEG = bytes.fromhex(  # tf.io.encode_jpeg of one black pixel, quality 50
    "ffd8ffe000104a46494600010101012c012c0000ffdb004300100b0c0e0c0a100e0d0e1211101318281a1816"
    "16183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c6567"
    "63ffc0000b080001000101011100ffc4001f0000010501010101010100000000000000000102030405060708"
    "090a0bffc400b5100002010303020403050504040000017d0102030004110512213141061351610722711432"
    "8191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a43444546474849"
    "4a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3"
    "a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9ea"
    "f1f2f3f4f5f6f7f8f9faffda0008010100003f00f3faffd9")


def header_size(contents: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] claimed by a JPEG/PNG/GIF/BMP header, read without decoding.

    [-1, -1] for other formats (the decoder then refuses them). A JPEG with a broken header
    raises, as its decode would. Branch-free and a couple of dozen small ops: it runs once per
    image inside tf.data, where each functional branch (tf.case) cost more than the reads.
    """
    b = tf.cast(tf.io.decode_raw(contents, tf.uint8, fixed_length=32), tf.int64)
    fields = tf.reduce_sum(tf.gather(b, _FIELD_BYTES) * tf.constant(_FIELD_WEIGHTS, tf.int64),
                           axis=1)
    magic = fields[0]
    signed = tf.where(fields >= 2 ** 31, fields - 2 ** 32, fields)
    is_jpeg = tf.equal(magic // 2 ** 16, 0xFFD8)
    # Select (v1) on a scalar hands its input on; tf.where (SelectV2) copies the file's bytes
    # (benchmarks/decoding.md).
    jpeg = tf.raw_ops.Select(condition=is_jpeg, x=contents, y=tf.constant(_TINY_JPEG))
    jpeg = tf.cast(tf.io.extract_jpeg_shape(jpeg)[:2], tf.int64)
    candidates = tf.stack([fields[1:3], fields[3:5], tf.abs(signed[5:7]), jpeg,
                           tf.constant([-1, -1], tf.int64)])
    which = tf.stack([tf.equal(magic, 0x89504E47), tf.equal(magic // 2 ** 8, 0x474946),
                      tf.equal(magic // 2 ** 16, 0x424D), is_jpeg, tf.constant(True)])
    return candidates[tf.argmax(tf.cast(which, tf.int32), output_type=tf.int32)]


def check_pixels(contents: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`contents`, after asserting that its header claims at most `max_pixels` pixels.

    Runs before decoding, so a small file claiming 40000x40000 never allocates the image.
    """
    with tf.control_dependencies([_at_most(header_size(contents), max_pixels)]):
        return tf.identity(contents)


def _at_most(hw: tf.Tensor, max_pixels: int) -> tf.Operation:
    """The assertion that [height, width] `hw` makes at most `max_pixels` pixels."""
    hw = tf.cast(hw, tf.int64)
    return tf.raw_ops.Assert(
        condition=hw[0] * hw[1] <= max_pixels,
        data=[tf.constant(f"too_large: the header claims more than {max_pixels} pixels")])


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [h, w, 3].

    Grayscale is repeated to three channels and alpha is dropped (as PIL's convert("RGB")
    does); an animated GIF gives its first frame.
    """
    img = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


DCT_RATIOS = (1, 2, 4, 8)  # the scales libjpeg can decode at, by DCT scaling


def dct_ratio(height: tf.Tensor, width: tf.Tensor, min_side: int = 2 * IMAGE_SIZE) -> tf.Tensor:
    """Index into DCT_RATIOS of the largest ratio that keeps the shorter side >= 448.

    Both resize policies shrink to 224 on the shorter side (center_crop) or on each side
    (squash). Decoding at 1/r while min(h, w) / r stays at least twice that leaves the last
    2x or more of the reduction to the antialiased resize, which keeps fc7 within a cosine
    similarity of 0.9995 of a full decode (benchmarks/precision_fidelity.py --dct); letting
    the DCT go down to 224 itself was measured at 0.997. So photos of 896 pixels and more on
    the shorter side are decoded at 1/2, 1/4 or 1/8.
    """
    short = tf.minimum(height, width)
    ok = [tf.cast(short // r >= min_side, tf.int32) for r in DCT_RATIOS[1:]]
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


def _vertical_pass(image: tf.Tensor, size: tf.Tensor, scale: tf.Tensor,
                   translation: tf.Tensor) -> tf.Tensor:
    """[h, w, c] -> float32 [size, w, c]: ScaleAndTranslate's vertical pass alone.

    The image is handed to the op as one column of h pixels with w*c channels, so its
    horizontal pass sees a width of 1: one tap of weight 1.0, a copy.
    """
    shape = tf.shape(image)
    out = tf.raw_ops.ScaleAndTranslate(
        images=tf.reshape(image, [1, shape[0], 1, shape[1] * shape[2]]),
        size=tf.stack([size, 1]), scale=tf.stack([scale, 1.0]),
        translation=tf.stack([translation, 0.0]), kernel_type="triangle", antialias=True)
    return tf.reshape(out, [size, shape[1], shape[2]])


def scale_and_translate(image: tf.Tensor, size, scale: tf.Tensor,
                        translation: tf.Tensor) -> tf.Tensor:
    """[h, w, c] (uint8 or float) -> float32 [size[0], size[1], c]: the antialiased triangle
    resize `tf.raw_ops.ScaleAndTranslate(image[None], size, scale, translation, "triangle",
    antialias=True)[0]`, equal to it to the bit and 2x to 3x faster on a CPU, by shape.

    The op computes each axis's taps on its own, then runs a vertical pass (whole rows at a
    time, which the compiler vectorises) and a horizontal one (pixel by pixel, three channels
    innermost, which it does not); the horizontal pass was most of its time
    (benchmarks/decode_profile.py --resize). Here the horizontal pass is a second vertical
    pass over the transposed intermediate: the same taps with the same weights, summed in the
    same order, so the same floats.
    """
    size = tf.convert_to_tensor(size, tf.int32)
    rows = _vertical_pass(image, size[0], scale[0], translation[0])
    cols = _vertical_pass(tf.transpose(rows, [1, 0, 2]), size[1], scale[1], translation[1])
    return tf.transpose(cols, [1, 0, 2])


def _antialiased(image: tf.Tensor, size) -> tf.Tensor:
    """tf.image.resize(image, size, "bilinear", antialias=True), to the bit (its scale is the
    output size over the input size in float32, its translation zero)."""
    size = tf.convert_to_tensor(size, tf.int32)
    scale = tf.cast(size, tf.float32) / tf.cast(tf.shape(image)[:2], tf.float32)
    return scale_and_translate(image, size, scale, tf.zeros([2], tf.float32))


def resize(image: tf.Tensor, policy: str, antialias: bool = True) -> tf.Tensor:
    """uint8 or float [h, w, 3] -> float32 [224, 224, 3] by the named policy.

    `center_crop`: scale so the shorter side is 224 (aspect kept), then take the central
    224x224. `squash`: scale both sides to 224.
    """
    if antialias:
        # The antialiased resize reads uint8 itself, with the same result to the bit as from
        # a float32 copy (measured on the demo and generated photos), so that copy of the
        # decoded image is made only for the plain bilinear resize.
        def to(size):
            return _antialiased(image, size)
    else:
        def to(size):
            return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    if policy == "squash":
        out = to([IMAGE_SIZE, IMAGE_SIZE])
    elif policy == "center_crop":
        shape = tf.shape(image)
        h = tf.cast(shape[0], tf.float64)
        w = tf.cast(shape[1], tf.float64)
        scale = IMAGE_SIZE / tf.minimum(h, w)
        # max() guards the shorter side against rounding below 224.
        new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), IMAGE_SIZE)
        new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), IMAGE_SIZE)
        out = to(tf.stack([new_h, new_w]))
        top = (new_h - IMAGE_SIZE) // 2
        left = (new_w - IMAGE_SIZE) // 2
        out = out[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE, :]
    else:
        raise ValueError(f"unknown resize policy {policy!r}; use center_crop or squash")
    out.set_shape([IMAGE_SIZE, IMAGE_SIZE, 3])
    return out


WINDOW_MARGIN = 8  # pixels of the decoded window beyond the resize kernel's reach (see below)


# fast_decode's DCT scaling leaves at least 4x of the reduction to the antialiased resize:
# at jpeg_dct_scaling's 2x one photo of the 96-image benchmark mix fell to cosine 0.9979, at
# 3x the worst was 0.99957, at 4x 0.99994 (benchmarks/precision_fidelity.py --fast).
FAST_DCT_MIN_SIDE = 4 * IMAGE_SIZE


def center_crop_jpeg(contents: tf.Tensor, min_side: int = FAST_DCT_MIN_SIDE,
                     max_pixels: int = 0) -> tf.Tensor:
    """JPEG bytes -> float32 [224, 224, 3]: the center_crop policy with an antialiased resize,
    decoding only the window of the image that the crop keeps, at 1/2, 1/4 or 1/8 scale in
    the DCT domain while the shorter side stays at least `min_side`.

    The geometry is the center_crop policy's on the image as libjpeg decodes it at 1/r (the
    ratio of dct_ratio). The window reaches WINDOW_MARGIN pixels beyond where the resize
    kernel reads (libjpeg's chroma upsampling differs in the last few pixels at a window's
    edge), and ScaleAndTranslate maps the window straight onto the crop with the scale of the
    full resize and a translation for the window's offset: the same kernel weights on the
    same pixels, so only float rounding differs from the full path, and the rows and columns
    the crop drops are never decoded or resized.
    With max_pixels > 0, a JPEG whose header claims more pixels is refused before decoding
    (check_pixels' test, on the header this function reads anyway).
    """
    hw = tf.io.extract_jpeg_shape(contents)
    checks = [_at_most(hw, max_pixels)] if max_pixels > 0 else []
    index = dct_ratio(hw[0], hw[1], min_side)
    r = tf.gather(tf.constant(DCT_RATIOS, tf.int32), index)
    hs, ws = (hw[0] + r - 1) // r, (hw[1] + r - 1) // r   # libjpeg's scaled size: ceil
    h, w = tf.cast(hs, tf.float64), tf.cast(ws, tf.float64)
    s = IMAGE_SIZE / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * s), tf.int32), IMAGE_SIZE)
    new_w = tf.maximum(tf.cast(tf.round(w * s), tf.int32), IMAGE_SIZE)
    top, left = (new_h - IMAGE_SIZE) // 2, (new_w - IMAGE_SIZE) // 2
    # tf.image.resize's scale (float32, output size over input size), for both sides
    scale = (tf.cast(tf.stack([new_h, new_w]), tf.float32)
             / tf.cast(tf.stack([hs, ws]), tf.float32))
    # The kernel reads input pixels within max(1, 1/scale) of where an output pixel lands.
    reach = tf.cast(tf.math.ceil(tf.maximum(1.0, 1.0 / scale)), tf.int32) + WINDOW_MARGIN
    start = tf.cast(tf.math.floor(tf.cast(tf.stack([top, left]), tf.float32) / scale),
                    tf.int32) - reach
    end = tf.cast(tf.math.ceil(tf.cast(tf.stack([top, left]) + IMAGE_SIZE, tf.float32)
                               / scale), tf.int32) + reach
    start = tf.maximum(start, 0)
    end = tf.minimum(end, tf.stack([hs, ws]))
    window = tf.concat([start, end - start], axis=0)
    # libjpeg's defaults: dct_method INTEGER_FAST measured no faster here and fancy_upscaling
    # off lost fidelity (cosine 0.99974) for no gain (benchmarks/README.md, "fast_decode").
    branches = [lambda r=r: tf.io.decode_and_crop_jpeg(contents, window, channels=3, ratio=r)
                for r in DCT_RATIOS]
    with tf.control_dependencies(checks):
        img = tf.switch_case(index, branches)
    img.set_shape([None, None, 3])
    translation = tf.cast(start, tf.float32) * scale - tf.cast(tf.stack([top, left]),
                                                                tf.float32)
    out = scale_and_translate(img, [IMAGE_SIZE, IMAGE_SIZE], scale, translation)  # uint8 in
    out.set_shape([IMAGE_SIZE, IMAGE_SIZE, 3])
    return out


def caffe_preprocess(rgb: tf.Tensor) -> tf.Tensor:
    """float RGB 0..255 [..., 3] -> BGR minus the ImageNet means (the weights' input contract)."""
    bgr = tf.reverse(tf.cast(rgb, tf.float32), axis=[-1])
    mean = np.asarray(CAFFE_BGR_MEAN, np.float32)
    if bgr.shape.is_fully_defined():
        # The means spelled out to the image's shape: Eigen runs a subtraction broadcast over
        # an inner axis of 3 element by element, a same-shape one vectorised (a small share of
        # an image's time: benchmarks/decoding.md). The same values, to the bit.
        mean = np.broadcast_to(mean, bgr.shape)
    return bgr - tf.constant(mean)


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """[h, w, c] as stored -> as shown, by EXIF orientation 1-8 (anything else: as stored).
    5-8 swap the axes; then 2, 3, 6, 7 mirror left-right and 3, 4, 7, 8 top-bottom."""
    o = tf.cast(orientation, tf.int32)
    image = tf.cond((o >= 5) & (o <= 8), lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    lr = tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))
    ud = tf.reduce_any(tf.equal(o, [3, 4, 7, 8]))
    image = tf.cond(lr, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.cond(ud, lambda: tf.reverse(image, [0]), lambda: image)


def preprocess(contents: tf.Tensor, policy: str, antialias: bool = True,
               max_pixels: int = 0, jpeg_dct_scaling: bool = False,
               fast_decode: bool = False, orientation: Optional[tf.Tensor] = None
               ) -> tf.Tensor:
    """Encoded image bytes -> float32 [224, 224, 3] ready for VGG16.

    With max_pixels > 0, an image whose header claims more pixels is refused before decoding.
    With jpeg_dct_scaling, large JPEGs are decoded at reduced scale (decode_rgb_scaled).
    With fast_decode, a JPEG under center_crop (antialiased) is decoded only where the crop
    keeps it, DCT-scaled to 896 (center_crop_jpeg); other formats, `squash` and
    `antialias: false` take the exact path.
    With an EXIF `orientation` (preprocess.exif_orientation), the decoded image is turned
    upright before the resize; under fast_decode's crop, the 224x224 crop is (the same up to
    the resize's rounding: the centre crop of a square is turned with the image).
    """
    def checked(contents):
        return check_pixels(contents, max_pixels) if max_pixels > 0 else contents

    if fast_decode and policy == "center_crop" and antialias:
        # The JPEG branch checks the pixels on the header it reads for the window: the general
        # header read (a couple of dozen ops and a copy of the file's bytes) weighed on a path
        # this short (benchmarks/decoding.md).
        min_side = 2 * IMAGE_SIZE if jpeg_dct_scaling else FAST_DCT_MIN_SIDE
        out = tf.cond(tf.io.is_jpeg(contents),
                      lambda: center_crop_jpeg(contents, min_side, max_pixels),
                      lambda: resize(decode_rgb(checked(contents)), policy, antialias))
        if orientation is not None:
            out = orient(out, orientation)
        out.set_shape([IMAGE_SIZE, IMAGE_SIZE, 3])
        return caffe_preprocess(out)
    # fast_decode outside center_crop with antialias is the exact path: its DCT scaling is the
    # crop path's (to 896); decode_rgb_scaled's 448 is jpeg_dct_scaling's alone (cosine 0.9979)
    contents = checked(contents)
    decoded = decode_rgb_scaled(contents) if jpeg_dct_scaling else decode_rgb(contents)
    if orientation is not None:
        decoded = orient(decoded, orientation)
    return caffe_preprocess(resize(decoded, policy, antialias))
