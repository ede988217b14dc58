"""The features' contract as plain constants: the input VGG16 sees and the width of fc7.

preprocess.py computes this recipe in TensorFlow, vgg16.py ends at fc7, and manifest.py
records the recipe in every output's fingerprint, so that an output made with another recipe
is never resumed or searched as if it were the same features. A light module (no
TensorFlow; see the package docstring), so the light modules need not copy the numbers.
"""
from __future__ import annotations

IMAGE_SIZE = 224
# ImageNet means in B, G, R order, as subtracted by the Caffe-derived VGG16 weights.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Bump the version when decode, resize or the Caffe step change what the model sees.
PREPROCESS_RECIPE = "decode-rgb, resize, caffe-bgr-mean/v1"
RESIZE_POLICIES = ("center_crop", "squash")
FC7_DIM = 4096
