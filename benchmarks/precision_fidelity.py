"""Fidelity of a lower precision: cosine similarity of its fc7 to float32 fc7, per image.

    .venv/bin/python benchmarks/precision_fidelity.py [CONFIG] [--precision bfloat16]

Runs the job twice on CONFIG's images (default configs/demo.yaml), in float32 and in the
given precision, into temporary folders, and prints the minimum and mean cosine similarity.
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
    from estimator_vgg.writer import read_features

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--precision", default="bfloat16")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in ("float32", args.precision):
            cfg = load_config(args.config, [f"model.precision={p}", f"output.dir={tmp}/{p}"])
            run(cfg)
            out[p] = read_features(Path(tmp) / p)
    (paths, a), (paths_b, b) = out["float32"], out[args.precision]
    assert paths == paths_b
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{args.precision} vs float32 fc7 over {len(paths)} images of {args.config}: "
          f"cosine min {cos.min():.6f}, mean {cos.mean():.6f}")


if __name__ == "__main__":
    main()
