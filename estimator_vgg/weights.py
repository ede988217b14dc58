"""Weights: every source (ImageNet download, Keras .h5, tensorflow-vgg .npy, seeded synthetic)
read into one {layer: (kernel, bias)} form, checked, and converted once into the checkpoint
the Estimator restores, cached under `model.cache_dir` and keyed by the source's sha256.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from estimator_vgg import vgg16

log = logging.getLogger(__name__)

Arrays = Dict[str, Tuple[np.ndarray, np.ndarray]]


# tensorflow-vgg's vgg16.npy names its layers after the paper.
_NPY_NAMES = {f"conv{b}_{c}": f"block{b}_conv{c}"
              for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)}
_NPY_NAMES.update({"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"})

# Bump when the synthetic recipe changes, so old cached checkpoints are not reused.
SYNTHETIC_RECIPE = "he-normal-v1"
CHECKPOINT_NAME = "model.ckpt"


class WeightsError(ValueError):
    """A weights file is missing, unreadable or of the wrong shape; the message names it."""


@dataclass(frozen=True)
class PreparedWeights:
    """A converted checkpoint, ready for Estimator.predict."""
    model_dir: Path          # the Estimator's model_dir
    checkpoint: str          # the checkpoint prefix to restore
    source: str              # `imagenet`, `synthetic`, or the file's path
    sha256: str              # of the source file; for `synthetic`, of its recipe
    synthetic: bool


def synthetic_arrays(seed: int, include_top: bool = False) -> Arrays:
    """Deterministic He-normal weights from `seed` (numpy's PCG64), for tests and demos.

    With include_top the 1000-way `predictions` layer is added too, so the arrays can be
    written as a complete Keras file. These are never ImageNet features.
    """
    rng = np.random.default_rng(seed)
    layers = list(vgg16.layer_shapes().items())
    if include_top:
        layers.append(("predictions", ((4096, 1000), (1000,))))
    out = {}
    for name, (kshape, bshape) in layers:
        fan_in = int(np.prod(kshape[:-1]))
        k = rng.standard_normal(kshape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(bshape, dtype=np.float32) * np.float32(0.01)
        out[name] = (k, b)
    return out


def check_arrays(arrays: Arrays, origin: str) -> Arrays:
    """Keep the layers up to fc7, checking each is present with the expected shapes."""
    out = {}
    for name, (kshape, bshape) in vgg16.layer_shapes().items():
        if name not in arrays:
            hint = (" (a 'notop' file has no fc layers: use the file with the top)"
                    if name in ("fc1", "fc2") else "")
            raise WeightsError(f"{origin}: layer {name} is missing{hint}; "
                               f"found layers: {', '.join(sorted(arrays)) or 'none'}")
        k, b = arrays[name]
        if tuple(k.shape) != kshape or tuple(b.shape) != bshape:
            raise WeightsError(f"{origin}: layer {name} has kernel {tuple(k.shape)} and bias "
                               f"{tuple(b.shape)}; VGG16 needs {kshape} and {bshape}")
        out[name] = (np.asarray(k, np.float32), np.asarray(b, np.float32))
    return out


def _attr_names(value) -> list:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in value]


def read_keras_h5(path: os.PathLike) -> Arrays:
    """Read a Keras weights file by its `layer_names` / `weight_names` attributes.

    Works for the published file (datasets `block1_conv1_W_1:0`) and for Keras 2.x
    `save_weights` (datasets `block1_conv1/kernel:0`), and for a whole saved model (the weights
    under `model_weights`): the names differ, the attribute order (kernel, bias) does not.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path}: no `layer_names` attribute, so not a Keras weights file")
        arrays = {}
        for layer in _attr_names(root.attrs["layer_names"]):
            group = root[layer]
            names = _attr_names(group.attrs.get("weight_names", []))
            if not names:
                continue  # input, pooling and flatten layers hold no weights
            if len(names) != 2:
                raise WeightsError(f"{path}: layer {layer} holds {len(names)} weights "
                                   f"({names}); expected a kernel and a bias")
            arrays[layer] = tuple(np.asarray(group[n]) for n in names)
    return check_arrays(arrays, str(path))


def read_tfvgg_npy(path: os.PathLike) -> Arrays:
    """Read tensorflow-vgg's `vgg16.npy`: a pickled dict {conv1_1: [W, b], ..., fc7: [W, b]}.

    Unpickling can run code from the file: the config's `model.allow_pickle` guards the call.
    """
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1").item()
    except Exception as e:  # a broken pickle can raise almost anything
        raise WeightsError(f"{path}: not a tensorflow-vgg .npy weights file ({e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a {type(data).__name__}, not a dict of layers")
    arrays = {}
    for name, value in data.items():
        if name in _NPY_NAMES:
            if len(value) != 2:
                raise WeightsError(f"{path}: layer {name} holds {len(value)} arrays; expected "
                                   f"[W, b]")
            arrays[_NPY_NAMES[name]] = (np.asarray(value[0]), np.asarray(value[1]))
    return check_arrays(arrays, str(path))


def imagenet_file() -> Path:
    """Keras' published ImageNet weights: downloaded once into Keras' cache, md5 checked."""
    from estimator_vgg import downloads

    try:
        return downloads.ensure(downloads.IMAGENET_URL, downloads.imagenet_path(),
                                downloads.IMAGENET_MD5, "md5")
    except Exception as e:
        raise WeightsError(
            f"model.weights: imagenet: could not get {downloads.IMAGENET_URL} ({e}). On a "
            f"machine without internet, download that file elsewhere (md5 "
            f"{downloads.IMAGENET_MD5}) and set model.weights to its path") from None


def url_file(url: str, sha256: Optional[str], cache_dir: Path) -> Path:
    """Keras-layout weights at an http(s):// URL: downloaded once under model.cache_dir,
    checked against model.weights_sha256 when it is set."""
    from estimator_vgg import downloads

    try:
        return downloads.ensure(url, downloads.url_path(url, cache_dir), sha256, "sha256")
    except Exception as e:
        what = downloads.without_query(url)
        hint = ("the file there is not the one model.weights_sha256 names; check the mirror "
                "and the hash" if "corrupted" in str(e) or "hash" in str(e).lower() else
                "check the URL and that this machine reaches it, or download the file and set "
                "model.weights to its path")
        raise WeightsError(f"model.weights: could not get {what} "
                           f"({type(e).__name__}: {e}); {hint}. Nothing was cached") from None


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(arrays: Arrays, prefix: Path) -> str:
    """Write the arrays as the checkpoint the model's Saver restores (with a global_step)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.device("/device:CPU:0"):
        step = tf.compat.v1.train.get_or_create_global_step()
        variables = vgg16.create_variables()
        feeds, assigns = {}, []
        for name, (k, b) in variables.items():
            for var, value in zip((k, b), arrays[name]):
                ph = tf.compat.v1.placeholder(tf.float32, value.shape)
                feeds[ph] = value
                assigns.append(var.assign(ph, read_value=False))
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(step.initializer)
            sess.run(assigns, feed_dict=feeds)
            return saver.save(sess, str(prefix), global_step=0, write_meta_graph=False)


@dataclass(frozen=True)
class Located:
    """The configured weights identified (file and sha256), not yet read or converted."""
    source: str             # `imagenet`, `synthetic`, or the file's path
    sha256: str             # of the file; for `synthetic`, of its recipe
    path: Optional[Path]    # None for `synthetic`

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def locate(model_cfg) -> Located:
    """Find (downloading `imagenet` if needed) and hash the configured weights."""
    w = model_cfg.weights
    if w == "synthetic":
        recipe = f"synthetic seed={model_cfg.seed} recipe={SYNTHETIC_RECIPE}"
        return Located("synthetic", hashlib.sha256(recipe.encode()).hexdigest(), None)
    from estimator_vgg.downloads import is_url, without_query

    if w == "imagenet":
        path = imagenet_file()
    elif is_url(w):
        path = url_file(w, model_cfg.weights_sha256, model_cfg.cache_dir)
    else:
        path = Path(w)
    if not path.is_file():
        raise WeightsError(f"model.weights: file {path} does not exist")
    digest = sha256_file(path)
    if model_cfg.weights_sha256 and digest != model_cfg.weights_sha256:
        raise WeightsError(f"model.weights: {path} has sha256 {digest}, not the "
                           f"{model_cfg.weights_sha256} that model.weights_sha256 names")
    return Located(without_query(w) if is_url(w) else w, digest, path)


def prepare(model_cfg, located: Optional[Located] = None) -> PreparedWeights:
    """The checkpoint for `model_cfg.weights`, converting the source the first time it is seen.

    Pass `located` when the weights were located (hashed) already.
    """
    located = located or locate(model_cfg)
    source, digest, path = located.source, located.sha256, located.path
    synthetic = located.synthetic
    if synthetic:
        log.warning("model.weights is `synthetic`: deterministic random weights from seed %d. "
                    "The output is NOT ImageNet fc7; use it only to test the pipeline.",
                    model_cfg.seed)
    model_dir = Path(model_cfg.cache_dir) / "checkpoints" / digest[:16]
    info_file = model_dir / "weights.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("sha256") == digest:
            return PreparedWeights(model_dir, str(model_dir / info["checkpoint"]), source,
                                   digest, synthetic)
    start = time.time()
    if synthetic:
        arrays = check_arrays(synthetic_arrays(model_cfg.seed), "synthetic")
    elif path.suffix.lower() == ".npy":
        arrays = read_tfvgg_npy(path)
    else:
        arrays = read_keras_h5(path)
    log.info("converting weights %s (sha256 %s) into a checkpoint under %s", source,
             digest[:12], model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".tmp-{digest[:16]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ckpt = write_checkpoint(arrays, tmp / CHECKPOINT_NAME)
    (tmp / "weights.json").write_text(json.dumps({
        "source": source, "sha256": digest, "checkpoint": Path(ckpt).name,
        "synthetic": synthetic, "seed": model_cfg.seed if synthetic else None,
        "recipe": SYNTHETIC_RECIPE if synthetic else None}, indent=2))
    shutil.rmtree(model_dir, ignore_errors=True)  # a half-made dir from an older crash
    try:
        os.rename(tmp, model_dir)  # atomic: readers see no checkpoint or a whole one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        if not info_file.is_file():
            raise
    log.info("weights converted in %.1f s", time.time() - start)
    info = json.loads(info_file.read_text())
    return PreparedWeights(model_dir, str(model_dir / info["checkpoint"]), source, digest,
                           synthetic)


# ---------------------------------------------------------------- weights that travel (Ray)

NODE_CACHE_ENV = "ESTIMATOR_VGG_NODE_CACHE"   # each node's own cache (else ~/.cache/...)


def checkpoint_files(prepared: PreparedWeights) -> Dict[str, str]:
    """{file name: sha256} of a converted checkpoint's files (weights.json included)."""
    return {f.name: sha256_file(f) for f in sorted(Path(prepared.model_dir).iterdir())
            if f.is_file()}


def pack(prepared: PreparedWeights) -> Dict[str, bytes]:
    """The checkpoint's files as bytes, to travel to nodes that do not share model.cache_dir
    (through Ray's object store)."""
    return {f.name: f.read_bytes() for f in sorted(Path(prepared.model_dir).iterdir())
            if f.is_file()}


def on_node(prepared: PreparedWeights, files: Dict[str, str], fetch) -> PreparedWeights:
    """The driver's checkpoint as this node keeps it: under $ESTIMATOR_VGG_NODE_CACHE (each
    node sets its own; default ~/.cache/estimator-vgg), checked file by file against the
    driver's sha256; fetch() gives the packed files when the node has no good copy."""
    cache = Path(os.environ.get(NODE_CACHE_ENV) or "~/.cache/estimator-vgg").expanduser()
    model_dir = cache / "checkpoints" / prepared.sha256[:16]
    if not _same_files(model_dir, files):
        packed = fetch()
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = model_dir.parent / f".tmp-{prepared.sha256[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, data in packed.items():
            (tmp / name).write_bytes(data)
        if not _same_files(tmp, files):
            shutil.rmtree(tmp, ignore_errors=True)
            raise WeightsError(f"the weights that reached this node differ from the driver's "
                               f"(sha256 of {prepared.checkpoint})")
        shutil.rmtree(model_dir, ignore_errors=True)
        try:
            os.rename(tmp, model_dir)
        except OSError:  # another shard on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
            if not _same_files(model_dir, files):
                raise
        log.info("weights %s cached on this node in %s", prepared.source, model_dir)
    return PreparedWeights(model_dir, str(model_dir / Path(prepared.checkpoint).name),
                           prepared.source, prepared.sha256, prepared.synthetic)


_checked: Dict[str, float] = {}   # folders whose files were hashed, by their newest mtime


def _same_files(model_dir: Path, files: Dict[str, str]) -> bool:
    try:
        have = sorted(f.name for f in model_dir.iterdir() if f.is_file())
        if have != sorted(files):
            return False
        stamp = max((model_dir / n).stat().st_mtime for n in have)
    except OSError:
        return False
    if _checked.get(str(model_dir)) == stamp:
        return True
    if all(sha256_file(model_dir / n) == h for n, h in files.items()):
        _checked[str(model_dir)] = stamp
        return True
    return False
