"""Preprocessing: decoding every supported format to RGB, the resize policies, Caffe's BGR/mean."""
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import DEMO
from estimator_vgg.preprocess import (CAFFE_BGR_MEAN, IMAGE_SIZE, caffe_preprocess, decode_rgb,
                                      preprocess, resize)


def test_caffe_preprocessing_equals_keras_vgg16_preprocess_input():
    rgb = np.random.default_rng(1).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    ours = caffe_preprocess(tf.constant(rgb)).numpy()
    keras = tf.keras.applications.vgg16.preprocess_input(rgb.copy())
    np.testing.assert_allclose(ours, keras, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours[..., 0], rgb[..., 2] - CAFFE_BGR_MEAN[0], atol=1e-4)


@pytest.mark.parametrize("name", ["chelsea_cat.JPG", "camera_gray.png", "retina.gif",
                                  "space/astronaut fade.png", "space/rocket_portrait.bmp"])
def test_every_demo_format_decodes_to_rgb(name):
    img = decode_rgb(tf.io.read_file(str(DEMO / name)))
    assert img.dtype == tf.uint8 and img.shape[-1] == 3 and img.shape[0] > 100


def test_grayscale_repeats_the_channel():
    img = decode_rgb(tf.io.read_file(str(DEMO / "camera_gray.png"))).numpy()
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_center_crop_keeps_the_middle_of_a_wide_image():
    # 300 x 900: columns left third 0, middle third 200, right third 50.
    img = np.zeros((300, 900, 3), np.uint8)
    img[:, 300:600] = 200
    img[:, 600:] = 50
    out = resize(tf.constant(img), "center_crop", antialias=True).numpy()
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    # Scaled to 224 x 672, the crop is columns 224..448: exactly the middle third.
    np.testing.assert_allclose(out[:, 5:-5], 200, atol=1e-3)


def test_squash_keeps_the_whole_frame():
    img = np.zeros((300, 900, 3), np.uint8)
    img[:, :300] = 255
    out = resize(tf.constant(img), "squash").numpy()
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert out[:, :70].mean() > 250 and out[:, 80:].mean() < 1


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_the_two_pass_resize_equals_scale_and_translate_to_the_bit(dtype):
    """preprocess.scale_and_translate (two vertical passes of the op) gives the op's own floats
    for shrinking, enlarging, one-pixel and lopsided images, with the translations and
    non-integer scales of the fast path's window, so neither decode path moves a bit."""
    from estimator_vgg.preprocess import scale_and_translate

    rng = np.random.default_rng(7)
    cases = [((391, 391), (224, 224), (224 / 391, 224 / 391), (0, 0)),
             ((1185, 1212), (224, 224), (0.1891, 0.1891), (-3.7, -12.25)),
             ((37, 53), (224, 320), (224 / 37, 320 / 53), (0, 0)),
             ((1, 1), (224, 224), (224.0, 224.0), (0, 0)),
             ((5, 400), (224, 224), (44.8, 0.56), (0.5, -20.0)),
             ((1000, 150), (224, 224), (0.224, 1.4934), (-1.25, 0.0))]
    for (h, w), size, scale, translation in cases:
        img = tf.constant(rng.uniform(0, 255, (h, w, 3)).astype(dtype))
        scale = tf.constant(scale, tf.float32)
        translation = tf.constant(translation, tf.float32)
        op = tf.raw_ops.ScaleAndTranslate(images=img[None], size=size, scale=scale,
                                          translation=translation, kernel_type="triangle",
                                          antialias=True)[0]
        ours = tf.function(scale_and_translate)(img, size, scale, translation)  # in a graph
        np.testing.assert_array_equal(ours.numpy(), op.numpy(), err_msg=f"{h}x{w} -> {size}")


@pytest.mark.parametrize("policy", ["center_crop", "squash"])
def test_the_antialiased_resize_is_tf_image_resize_to_the_bit(policy):
    """What outputs of earlier releases were made with: tf.image.resize's antialiased bilinear
    resize of the decoded uint8 image (then the central crop), to the bit."""
    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    for h, w in [(300, 451), (451, 300), (224, 224), (90, 120), (1500, 1000)]:
        img = tf.cast(tf.image.resize(photo, [h, w]), tf.uint8)
        if policy == "squash":
            expected = tf.image.resize(img, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
        else:
            s = IMAGE_SIZE / min(h, w)
            nh, nw = max(round(h * s), IMAGE_SIZE), max(round(w * s), IMAGE_SIZE)
            full = tf.image.resize(img, [nh, nw], antialias=True)
            top, left = (nh - IMAGE_SIZE) // 2, (nw - IMAGE_SIZE) // 2
            expected = full[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
        np.testing.assert_array_equal(resize(img, policy).numpy(), expected.numpy(),
                                      err_msg=f"{h}x{w}")


def test_small_images_are_scaled_up_to_224():
    img = np.full((133, 200, 3), 90, np.uint8)
    out = resize(tf.constant(img), "center_crop").numpy()
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(out, 90, atol=1e-3)


def test_preprocess_gives_bgr_minus_mean_of_a_flat_colour():
    red = np.zeros((256, 256, 3), np.uint8)
    red[..., 0] = 255
    out = preprocess(tf.io.encode_png(red), "center_crop").numpy()
    np.testing.assert_allclose(out[..., 2], 255 - CAFFE_BGR_MEAN[2], atol=1e-3)  # R is last
    np.testing.assert_allclose(out[..., 0], -CAFFE_BGR_MEAN[0], atol=1e-3)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown resize policy 'crop'"):
        resize(tf.zeros([4, 4, 3]), "crop")


def test_dct_ratio_is_the_largest_scale_keeping_the_shorter_side_at_448():
    from estimator_vgg.preprocess import DCT_RATIOS, dct_ratio

    for (h, w), ratio in {(223, 4000): 1, (895, 1200): 1, (896, 896): 2, (1200, 1600): 2,
                          (1792, 2400): 4, (3583, 3583): 4, (3584, 4000): 8}.items():
        assert DCT_RATIOS[int(dct_ratio(tf.constant(h), tf.constant(w)))] == ratio, (h, w)


def test_jpeg_dct_scaling_decodes_large_jpegs_smaller_and_leaves_the_rest_alone():
    from estimator_vgg.preprocess import decode_rgb_scaled

    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    big = tf.cast(tf.image.resize(photo, [2000, 3000]), tf.uint8)
    big_jpeg = tf.io.encode_jpeg(big, quality=90)
    assert decode_rgb_scaled(big_jpeg).shape == (500, 750, 3)  # 1/4: 500 >= 448 > 250
    small_jpeg = tf.io.read_file(str(DEMO / "chelsea_cat.JPG"))  # 300 high: full scale
    assert decode_rgb_scaled(small_jpeg).shape == decode_rgb(small_jpeg).shape
    png = tf.io.encode_png(big)
    assert decode_rgb_scaled(png).shape == (2000, 3000, 3)  # not a JPEG: decoded as before
    for contents in (small_jpeg, png):
        np.testing.assert_array_equal(preprocess(contents, "center_crop", True, 0, True),
                                      preprocess(contents, "center_crop", True, 0, False))
    # the large one: the network's input moves little (0..255 scale)
    diff = np.abs(preprocess(big_jpeg, "center_crop", True, 0, True)
                  - preprocess(big_jpeg, "center_crop", True, 0, False))
    assert 0 < diff.mean() < 1.0, diff.mean()  # scaled (not the full decode), and close


def test_a_jpeg_magic_followed_by_junk_is_refused_with_and_without_dct_scaling():
    from estimator_vgg.preprocess import decode_rgb_scaled

    junk = tf.constant(b"\xff\xd8" + b"\x00" * 64)  # not a JPEG for decode_image either
    for decode in (decode_rgb, decode_rgb_scaled):
        with pytest.raises(tf.errors.InvalidArgumentError):
            decode(junk)


def test_jpeg_dct_scaling_reaches_the_job_and_its_fingerprint(tmp_path):
    import json

    from conftest import make_config
    from estimator_vgg.runner import run
    from estimator_vgg.store import OutputError
    from estimator_vgg.output import read_features

    images = tmp_path / "imgs"
    images.mkdir()
    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    big = tf.cast(tf.image.resize(photo, [1000, 1500]), tf.uint8)
    (images / "big.jpg").write_bytes(tf.io.encode_jpeg(big, quality=90).numpy())
    (images / "small.jpg").write_bytes((DEMO / "chelsea_cat.JPG").read_bytes())
    rows = {}
    for dct in (False, True):
        cfg = make_config(tmp_path, input={"dir": str(images)},
                          output={"dir": str(tmp_path / f"out{dct}")},
                          preprocess={"jpeg_dct_scaling": dct}, devices={"batch_size": 2})
        run(cfg)
        paths, fc7 = read_features(tmp_path / f"out{dct}")
        rows[dct] = dict(zip(paths, fc7))
        fp = json.loads((tmp_path / f"out{dct}" / "manifest.json").read_text())["fingerprint"]
        # off: the fingerprint of outputs made before the option existed, so they resume
        assert fp["preprocessing"].get("jpeg_dct_scaling") is (True if dct else None)
    np.testing.assert_array_equal(rows[True]["small.jpg"], rows[False]["small.jpg"])
    assert not np.array_equal(rows[True]["big.jpg"], rows[False]["big.jpg"])
    cfg = make_config(tmp_path, input={"dir": str(images)},
                      output={"dir": str(tmp_path / "outFalse")},
                      preprocess={"jpeg_dct_scaling": True})
    with pytest.raises(OutputError, match="preprocessing.jpeg_dct_scaling: False in the output, "
                                          "True now"):
        run(cfg)


def _jpegs_of_many_shapes():
    """JPEGs landscape, portrait, square, odd-sized, smaller than 224 (upscaled) and large
    enough for every DCT ratio, made from a demo photo."""
    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    for h, w in ((300, 451), (451, 300), (256, 256), (225, 999), (150, 200), (1000, 1500),
                 (1901, 2533), (3000, 4000)):
        img = tf.cast(tf.image.resize(photo, [h, w]), tf.uint8)
        yield (h, w), tf.io.encode_jpeg(img, quality=90)


def test_the_crop_window_decode_gives_the_center_crop_of_the_full_decode():
    """fast_decode's JPEG path decodes only the window the crop keeps and resizes it onto the
    crop directly: the same pixels as resizing the whole (equally DCT-scaled) image, up to
    float rounding, for every shape and every DCT ratio."""
    from estimator_vgg.preprocess import center_crop_jpeg, decode_rgb_scaled

    for (h, w), jpeg in _jpegs_of_many_shapes():
        exact = resize(decode_rgb(jpeg), "center_crop").numpy()
        np.testing.assert_allclose(center_crop_jpeg(jpeg, min_side=10 ** 9).numpy(), exact,
                                   atol=0.02, err_msg=f"{h}x{w}, no DCT scaling")
        scaled = resize(decode_rgb_scaled(jpeg), "center_crop").numpy()
        np.testing.assert_allclose(center_crop_jpeg(jpeg, min_side=2 * IMAGE_SIZE).numpy(),
                                   scaled, atol=0.02, err_msg=f"{h}x{w}, DCT scaling at 448")


def test_fast_decode_scales_only_photos_that_keep_four_times_the_crop():
    from estimator_vgg.preprocess import FAST_DCT_MIN_SIDE

    assert FAST_DCT_MIN_SIDE == 4 * IMAGE_SIZE
    for (h, w), jpeg in _jpegs_of_many_shapes():
        fast = preprocess(jpeg, "center_crop", True, 0, False, True).numpy()
        exact = preprocess(jpeg, "center_crop", True, 0, False, False).numpy()
        if min(h, w) < 2 * FAST_DCT_MIN_SIDE:  # full scale: only float rounding differs
            np.testing.assert_allclose(fast, exact, atol=0.02, err_msg=f"{h}x{w}")
        else:  # 1/2 or less: close, not equal
            assert 0 < np.abs(fast - exact).mean() < 1.0, (h, w)


def test_fast_decode_leaves_other_formats_squash_and_plain_bilinear_exact():
    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    big = tf.cast(tf.image.resize(photo, [2000, 3000]), tf.uint8)  # large enough for DCT
    png, jpeg = tf.io.encode_png(big), tf.io.encode_jpeg(big, quality=90)
    for contents, policy, antialias in ((png, "center_crop", True), (jpeg, "squash", True),
                                        (jpeg, "center_crop", False)):
        np.testing.assert_array_equal(
            preprocess(contents, policy, antialias, 0, False, True),
            preprocess(contents, policy, antialias, 0, False, False), err_msg=policy)


def test_the_header_check_reads_every_format_and_refuses_broken_jpeg_headers():
    from estimator_vgg.preprocess import header_size

    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    small = tf.image.resize(photo, [37, 53])
    small = tf.cast(small, tf.uint8)
    for contents in (tf.io.encode_png(small), tf.io.encode_jpeg(small)):
        assert header_size(contents).numpy().tolist() == [37, 53]
    gif, bmp = (DEMO / "retina.gif").read_bytes(), (DEMO / "space" / "rocket_portrait.bmp")
    want = tf.io.decode_image(gif, channels=3, expand_animations=False).shape[:2]
    assert header_size(tf.constant(gif)).numpy().tolist() == list(want)
    want = tf.io.decode_image(bmp.read_bytes(), channels=3).shape[:2]
    assert header_size(tf.constant(bmp.read_bytes())).numpy().tolist() == list(want)
    top_down = b"BM" + b"\0" * 16 + (640).to_bytes(4, "little") + (-480 & 0xFFFFFFFF).to_bytes(
        4, "little")
    assert header_size(tf.constant(top_down)).numpy().tolist() == [480, 640]
    assert header_size(tf.constant(b"RIFF1234WEBPVP8 ")).numpy().tolist() == [-1, -1]
    assert header_size(tf.constant(b"")).numpy().tolist() == [-1, -1]
    with pytest.raises(tf.errors.InvalidArgumentError):
        header_size(tf.constant(b"\xff\xd8\xff" + b"\x00" * 64))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("encode", ["jpeg", "png"])
def test_the_pixel_limit_refuses_a_larger_header_on_every_decode_path(fast, encode):
    # fast_decode's JPEG branch checks the header it reads for the window, the other paths
    # check_pixels: each refuses 37 x 53 = 1961 pixels under a limit of 1960, before decoding
    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    small = tf.cast(tf.image.resize(photo, [37, 53]), tf.uint8)
    contents = tf.io.encode_jpeg(small) if encode == "jpeg" else tf.io.encode_png(small)
    for dct in (False, True):
        for limit in (1961, 1960):  # in a graph, as inside tf.data
            graph = tf.function(lambda c, limit=limit, dct=dct: preprocess(
                c, "center_crop", True, limit, jpeg_dct_scaling=dct, fast_decode=fast))
            if limit == 1961:
                assert graph(contents).shape == [224, 224, 3]
                continue
            with pytest.raises(tf.errors.InvalidArgumentError, match="too_large"):
                graph(contents)


def test_fast_decode_reaches_the_job_and_its_fingerprint(tmp_path):
    import json

    from conftest import make_config
    from estimator_vgg.runner import run
    from estimator_vgg.store import OutputError

    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):  # two steps of one image: the second is traced
        (images / name).write_bytes((DEMO / "chelsea_cat.JPG").read_bytes())
    cfg = make_config(tmp_path, input={"dir": str(images)}, preprocess={"fast_decode": True},
                      devices={"batch_size": 1})
    run(cfg)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["fingerprint"]["preprocessing"]["fast_decode"] is True
    assert 0 <= manifest["runs"][-1]["input_wait_share"] <= 1
    exact = make_config(tmp_path, input={"dir": str(images)}, devices={"batch_size": 1})
    with pytest.raises(OutputError, match="preprocessing.fast_decode: True in the output, "
                                          "False now"):
        run(exact)


def test_whole_batches_are_the_default_batches_and_a_failure_drops_its_batch_whole(tmp_path):
    """input_fn(whole_batches=True), the job's fast form over local files: where nothing
    fails, the same batches (per part, the last one shorter) and the same images, to the bit,
    as the default form; a file that fails takes exactly its own batch with it."""
    import shutil

    from conftest import make_config
    from estimator_vgg.input import input_fn
    from estimator_vgg.listing import list_images

    d = tmp_path / "imgs"
    d.mkdir()
    for n, p in enumerate(sorted(list_images(DEMO, ["jpg", "png"])) * 2):
        shutil.copy(DEMO / p, d / f"{n:02d}{os.path.splitext(p)[1]}")
    paths = sorted(list_images(d, ["jpg", "png"]))
    cfg = make_config(tmp_path, input={"dir": str(d)}, devices={"batch_size": 3})
    sizes = [5, 0, len(paths) - 5]  # an empty part (all blocked) in between

    def batches(**kw):
        return [(list(b["path"].numpy()), b["image"].numpy())
                for b in input_fn(cfg, paths, part_sizes=sizes, skip_bad=True, **kw)()]

    default, whole = batches(), batches(whole_batches=True)
    rest = len(paths) - 5
    per_part = [3, 2] + [3] * (rest // 3) + ([rest % 3] if rest % 3 else [])
    assert [len(k) for k, _ in whole] == per_part == [len(k) for k, _ in default]
    for (k1, a), (k2, b) in zip(default, whole):
        assert k1 == k2 and np.array_equal(a, b)
    (d / paths[6]).write_bytes((d / paths[6]).read_bytes()[:300])  # in part 3's 1st batch
    broken = batches(whole_batches=True)
    assert [k for k, _ in broken] == [k for k, _ in whole[:2]] + [k for k, _ in whole[3:]]
    with pytest.raises(ValueError, match="whole_batches is for skip_bad"):
        input_fn(cfg, paths, whole_batches=True)


def test_a_failed_file_is_probed_on_the_decode_path_the_job_ran(tmp_path):
    """The errors table's reason comes from decoding the file again the way the job did. A
    portrait JPEG cut off below its centre crop decodes under fast_decode (the window ends
    before the missing rows) and fails the exact path: the probe agrees with each."""
    from estimator_vgg.config import PreprocessConfig
    from estimator_vgg.probe import classify

    photo = tf.io.decode_image(tf.io.read_file(str(DEMO / "chelsea_cat.JPG")), channels=3)
    portrait = tf.io.encode_jpeg(tf.cast(tf.image.resize(photo, [900, 300]), tf.uint8),
                                 quality=90).numpy()
    (tmp_path / "cut.jpg").write_bytes(portrait[:int(len(portrait) * 0.95)])
    contents = tf.io.read_file(str(tmp_path / "cut.jpg"))
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess(contents, "center_crop", True, 0, False, False).numpy()
    assert preprocess(contents, "center_crop", True, 0, False, True).shape == (224, 224, 3)

    exact = classify(tmp_path, "cut.jpg", 10 ** 8, preprocessing=PreprocessConfig())
    assert exact[0] == "decode_error", exact
    fast = classify(tmp_path, "cut.jpg", 10 ** 8,
                    preprocessing=PreprocessConfig(fast_decode=True))
    assert fast[0] == "read_error" and "reads now" in fast[1], fast
