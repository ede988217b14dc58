"""Shared fixtures: the demo images, seeded weights in every file format, the eager reference."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_images"
SEED = 0

sys.path.insert(0, str(Path(__file__).parent))


SUBPROCESS_TIMEOUT = 180  # seconds; a hung child fails its test instead of blocking CI


def run_py(*args, **kw):
    """A Python subprocess in this interpreter, with TensorFlow's start-up noise muted, killed
    after `timeout` seconds (default SUBPROCESS_TIMEOUT)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    env.update(kw.pop("env", {}))
    kw.setdefault("timeout", SUBPROCESS_TIMEOUT)
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="session")
def demo_paths():
    from estimator_vgg.listing import list_images
    return list_images(DEMO, ["jpg", "jpeg", "png", "gif", "bmp"])


@pytest.fixture(scope="session")
def seed_arrays():
    from estimator_vgg.weights import synthetic_arrays
    return synthetic_arrays(SEED, include_top=True)


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory, seed_arrays):
    """The seed-0 weights as {"keras215": .h5, "published": .h5, "npy": .npy}."""
    from weight_files import write_published_h5, write_tfvgg_npy

    d = tmp_path_factory.mktemp("weights")
    files = {"keras215": d / "keras215.h5", "published": d / "published.h5",
             "npy": d / "vgg16.npy"}
    r = run_py(ROOT / "tests" / "keras_side.py", "save-weights", SEED, files["keras215"])
    assert r.returncode == 0, r.stderr[-3000:]
    write_published_h5(seed_arrays, files["published"])
    write_tfvgg_npy(seed_arrays, files["npy"])
    return files


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory, demo_paths):
    """The demo images preprocessed (center_crop), as fed to both the Estimator and Keras."""
    import tensorflow as tf
    from estimator_vgg.preprocess import preprocess

    x = np.stack([preprocess(tf.io.read_file(str(DEMO / p)), "center_crop").numpy()
                  for p in demo_paths])
    f = tmp_path_factory.mktemp("inputs") / "demo.npy"
    np.save(f, x)
    return f


@pytest.fixture(scope="session")
def keras_fc7(tmp_path_factory, weight_files, demo_inputs):
    """fc7 of the demo images from eager Keras VGG16, loading each .h5 with Keras' own loader."""
    out = {}
    d = tmp_path_factory.mktemp("reference")
    for name in ("keras215", "published"):
        f = d / f"{name}.npy"
        r = run_py(ROOT / "tests" / "keras_side.py", "fc7", weight_files[name], demo_inputs, f)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = np.load(f)
    return out


def make_config(tmp_path, **sections):
    """A validated Config for tests: demo images in, tmp_path/out out, a tmp weights cache."""
    from estimator_vgg.config import load_config

    base = {"input": {"dir": str(DEMO)}, "output": {"dir": str(tmp_path / "out")},
            "model": {"weights": "synthetic", "seed": SEED,
                      "cache_dir": str(tmp_path / "cache")}}
    for sec, body in sections.items():
        base.setdefault(sec, {}).update(body)
    return load_config(None, **base)


def job_config(tmp_path, images, out):
    """A YAML config for running the job as a user would: synthetic weights, 2 CPU towers of
    batch 1, every failure tolerated (the tests count them)."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"input:\n  dir: {images}\n  max_error_fraction: 1.0\noutput:\n  dir: {out}\n"
                   f"model:\n  weights: synthetic\n  cache_dir: {ROOT / '.cache'}\n"
                   f"devices:\n  cpus: 2\n  batch_size: 1\n")
    return cfg


def rel_diff(a, b):
    """Per-row relative L2 difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)
