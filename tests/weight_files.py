"""Seeded VGG16 weights written in the real third-party file formats, for tests.

- `write_published_h5`: the layout of Keras' published ImageNet file
  (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`): root attribute `layer_names`, per layer an
  attribute `weight_names` naming datasets `<layer>_W_1:0` and `<layer>_b_1:0`.
- `write_tfvgg_npy`: tensorflow-vgg's `vgg16.npy`, a pickled dict {conv1_1: [W, b], ...}.
- The Keras 2.15 `save_weights` layout is written by Keras itself (keras_side.py).
"""
import numpy as np

KERAS_LAYERS = ["input_1", "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1",
                "block2_conv2", "block2_pool", "block3_conv1", "block3_conv2", "block3_conv3",
                "block3_pool", "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
                "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool", "flatten", "fc1",
                "fc2", "predictions"]
TFVGG_NAMES = {"block1_conv1": "conv1_1", "block1_conv2": "conv1_2", "block2_conv1": "conv2_1",
               "block2_conv2": "conv2_2", "block3_conv1": "conv3_1", "block3_conv2": "conv3_2",
               "block3_conv3": "conv3_3", "block4_conv1": "conv4_1", "block4_conv2": "conv4_2",
               "block4_conv3": "conv4_3", "block5_conv1": "conv5_1", "block5_conv2": "conv5_2",
               "block5_conv3": "conv5_3", "fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}


def write_published_h5(arrays, path):
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in KERAS_LAYERS]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"1.1.0"
        for layer in KERAS_LAYERS:
            g = f.create_group(layer)
            if layer not in arrays:
                g.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            names = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, a in zip(names, arrays[layer]):
                g.create_dataset(n, data=a)


def write_tfvgg_npy(arrays, path):
    data = {TFVGG_NAMES[k]: [w, b] for k, (w, b) in arrays.items()}
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
