"""Regenerate the golden fc7 vectors of the demo images (never edit them by hand).

    .venv/bin/python tools/make_golden.py

Runs the real job (configs/demo.yaml: synthetic weights from seed 0, 2 CPU towers) into a
temporary folder and writes tests/golden/demo_fc7.npz (paths, fc7) and
tests/golden/manifest.json (how they were made, the versions, the tolerance).
Regenerate only for an intended change of the features, and say why in the commit.
"""
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CONFIG = "configs/demo.yaml"
# Per-row relative L2 difference allowed against the golden vectors. Runs on one machine are
# bitwise equal; other CPUs (oneDNN picks kernels by ISA) and tower counts differ by about
# 1e-6; a real change (preprocessing, weights, layers) moves fc7 by 1e-2 or more.
TOLERANCE = 1e-4


def main() -> None:
    from estimator_vgg.output import read_features

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "estimator_vgg", CONFIG, f"output.dir={tmp}/out"]
        subprocess.run(cmd, cwd=ROOT, check=True)
        paths, fc7 = read_features(Path(tmp) / "out")
        run_manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
    run_manifest["config"]["model"].pop("cache_dir")  # a path on the machine that made it
    GOLDEN.mkdir(parents=True, exist_ok=True)
    np.savez(GOLDEN / "demo_fc7.npz", paths=np.array(paths), fc7=fc7)
    manifest = {
        "what": "fc7 of every demo image under synthetic weights (seed 0)",
        "made_by": "tools/make_golden.py, which runs: python -m estimator_vgg "
                   f"{CONFIG} output.dir=<tmp>",
        "made_on": datetime.date.today().isoformat(),
        "config": {k: v for k, v in run_manifest["config"].items()
                   if k in ("preprocess", "model", "devices")},
        "fingerprint": run_manifest["fingerprint"],
        "versions": run_manifest["runs"][-1]["versions"],
        "rows": len(paths),
        "tolerance": {"per_row_relative_l2": TOLERANCE},
        "tolerance_why": "same machine: bitwise equal; other CPUs and tower counts: ~1e-6; "
                         "any real change to preprocessing, weights or layers: >1e-2",
    }
    (GOLDEN / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(paths)} golden rows to {GOLDEN}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
