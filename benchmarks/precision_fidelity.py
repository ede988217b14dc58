"""Fidelity of a lower precision, or of JPEG DCT scaling: cosine similarity of its fc7 to
the float32, full-decode fc7, per image.

    .venv/bin/python benchmarks/precision_fidelity.py [CONFIG] [--precision bfloat16]
    .venv/bin/python benchmarks/precision_fidelity.py [CONFIG] --dct --input DIR --make-images 48
    .venv/bin/python benchmarks/precision_fidelity.py [CONFIG] --fast --input DIR --make-images 96

Runs the job twice on CONFIG's images (default configs/demo.yaml; --input overrides
input.dir), in float32 and in the given precision (or in float32 with
preprocess.jpeg_dct_scaling), into temporary folders, and prints the minimum and mean cosine
similarity; with --dct also over the images that were decoded at reduced scale.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from estimator_vgg.config import load_config
    from estimator_vgg.runner import run
    from estimator_vgg.output import read_features

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--dct", action="store_true",
                    help="compare preprocess.jpeg_dct_scaling=true instead of a precision")
    ap.add_argument("--fast", action="store_true",
                    help="compare preprocess.fast_decode=true (every fast decode measure)")
    ap.add_argument("--input", help="another input.dir")
    ap.add_argument("--make-images", type=int, metavar="N",
                    help="into --input (a new folder): N JPEGs made as throughput.py makes its "
                         "benchmark set (seed 0), camera-size photos among them")
    args = ap.parse_args()
    if args.make_images:
        if not args.input:
            ap.error("--make-images needs --input, the folder to make them in")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from throughput import make_images
        make_images(Path(args.input), args.make_images)
    base = [f"input.dir={args.input}"] if args.input else []
    if args.fast:
        variants = {"exact decode": ["model.precision=float32"],
                    "fast_decode": ["model.precision=float32", "preprocess.fast_decode=true"]}
    elif args.dct:
        variants = {"full decode": ["model.precision=float32"],
                    "DCT scaling": ["model.precision=float32",
                                    "preprocess.jpeg_dct_scaling=true"]}
    else:
        variants = {"float32": ["model.precision=float32"],
                    args.precision: [f"model.precision={args.precision}"]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, overrides) in enumerate(variants.items()):
            cfg = load_config(args.config, base + overrides + [f"output.dir={tmp}/{k}"])
            run(cfg)
            out[name] = read_features(Path(tmp) / str(k))
        input_dir = cfg.input.dir
    (paths, a), (paths_b, b) = out.values()
    assert paths == paths_b
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    first, second = variants
    print(f"{second} vs {first} fc7 over {len(paths)} images of {input_dir}: "
          f"cosine min {cos.min():.6f}, mean {cos.mean():.6f}")
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    pairs = (unit @ unit.T)[np.triu_indices(len(paths), 1)]
    if len(pairs):
        print(f"  for scale, two different images of this set ({first}): cosine min "
              f"{pairs.min():.4f}, mean {pairs.mean():.4f}, max {pairs.max():.4f}")
    if args.dct or args.fast:
        scaled = [i for i, p in enumerate(paths) if _scaled(input_dir / p)]
        if scaled:
            print(f"  the {len(scaled)} images decoded at reduced scale: cosine min "
                  f"{cos[scaled].min():.6f}, mean {cos[scaled].mean():.6f}")


def _scaled(path: Path) -> bool:
    """Whether jpeg_dct_scaling decodes this file at less than full scale."""
    import tensorflow as tf

    from estimator_vgg.preprocess import dct_ratio
    data = tf.constant(path.read_bytes())
    if not tf.io.is_jpeg(data):
        return False
    h, w, _ = tf.unstack(tf.io.extract_jpeg_shape(data))
    return int(dct_ratio(h, w)) > 0


if __name__ == "__main__":
    main()
