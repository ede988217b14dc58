"""Regenerate the golden fc7 vectors (never edit them by hand).

    .venv/bin/python tools/make_golden.py            # both sets below
    .venv/bin/python tools/make_golden.py demo       # the demo images only
    .venv/bin/python tools/make_golden.py options    # the preprocessing options only

demo: runs the real job (configs/demo.yaml: synthetic weights from seed 0, 2 CPU towers) into
a temporary folder and writes tests/golden/demo_fc7.npz (paths, fc7) and
tests/golden/manifest.json (how they were made, the versions, the tolerance).

options: runs the same config over tests/fixtures/options (tools/make_option_fixtures.py)
once per preprocessing option, the option set as an override on the command line, and writes
tests/golden/options/<option>.npz and tests/golden/options/manifest.json: each option's
overrides, the reference the tests hold its golden to, the sha256 of every fixture file (the
goldens belong to those bytes) and how far the option moves each image's fc7 from the
default's. It refuses to write goldens in which an option leaves an image it is meant to change
within MIN_MOVE of the default's fc7, or moves one it should leave alone by more than the
tolerance: such a golden would not prove the option.

Regenerate only for an intended change of the features, and say why in the commit.
"""
import datetime
import hashlib
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


def make_demo() -> None:
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


OPTION_IMAGES = "tests/fixtures/options"
OPTION_GOLDEN = GOLDEN / "options"
# An option must move the fc7 of each image it is meant to change by more than this (per-row
# relative L2 against the default's), ten times the tolerance, or its golden proves nothing.
MIN_MOVE = 10 * TOLERANCE
EXIF = ["exif_3_rotate180.jpg", "exif_6_rotate90.jpg", "exif_8_rotate270.jpg"]
PILLOW = ["photo.tiff", "photo.webp"]
LARGE, MID = "large_landscape.jpg", "mid_portrait.jpg"
EVERY = [*EXIF, LARGE, MID, *PILLOW]
# Every option's job: the demo config over the fixtures in two parts, the five JPEGs (read by
# TensorFlow in whole batches, as local files are, unless the option needs the Python stage)
# and photo.tiff with photo.webp (read by the Python stage, which decodes them with Pillow).
JOB = [CONFIG, f"input.dir={OPTION_IMAGES}", "output.rows_per_part=5"]
# The references the tests compare each golden with (tests/keras_side.py options): a decode,
# EXIF turn and resize written in the test (TensorFlow's resize, Pillow's decode and
# exif_transpose), eager Keras VGG16, at the tolerance; for the DCT options the exact path's,
# within the fidelity docs/devices.md documents for the images they scale.
EXACT = {"resize": "center_crop", "antialias": True, "exif": False}
OPTIONS = {
    "default": {
        "overrides": [],
        "what": "every option at its default: input.fallback_decoder pillow, so this is the "
                "Pillow fallback's golden (photo.tiff, photo.webp: without the fallback they "
                "have no row, unsupported_format), and the baseline the others move from",
        "moves": [],
        "reference": dict(EXACT, per_row_relative_l2=TOLERANCE)},
    "antialias_false": {
        "overrides": ["preprocess.antialias=false"],
        "what": "the plain bilinear resize: every fixture image is shrunk",
        "moves": EVERY,
        "reference": dict(EXACT, antialias=False, per_row_relative_l2=TOLERANCE)},
    "squash": {
        "overrides": ["preprocess.resize=squash"],
        "what": "both sides to 224: no fixture image is square",
        "moves": EVERY,
        "reference": dict(EXACT, resize="squash", per_row_relative_l2=TOLERANCE)},
    "jpeg_dct_scaling": {
        "overrides": ["preprocess.jpeg_dct_scaling=true"],
        "what": "JPEGs of 896 and more on the shorter side decoded at 1/2..1/8 in the DCT "
                "domain: large_landscape.jpg at 1/4, mid_portrait.jpg at 1/2",
        "moves": [LARGE, MID],
        "reference": dict(EXACT, per_row_relative_l2=TOLERANCE, scaled_min_side=896,
                          scaled_min_cosine=0.9979,
                          why="the exact path's fc7; the images it scales within cosine "
                              "0.9979 of it, the worst of 96 images in docs/devices.md "
                              "(0.997918); the others at the tolerance")},
    "fast_decode": {
        "overrides": ["preprocess.fast_decode=true"],
        "what": "JPEGs decoded only in the crop's window (every fixture JPEG), at 1/2..1/8 "
                "in the DCT domain from 1792 on the shorter side (large_landscape.jpg at 1/2)",
        "moves": [LARGE],
        "reference": dict(EXACT, per_row_relative_l2=TOLERANCE, scaled_min_side=1792,
                          scaled_min_cosine=0.9995,
                          why="the exact path's fc7; the images it scales within cosine "
                              "0.9995 of it, what docs/devices.md and the option promise; the "
                              "others (the crop window alone) at the tolerance")},
    "exif_orientation": {
        "overrides": ["preprocess.exif_orientation=true"],
        "what": "JPEGs turned upright by their EXIF orientation (3, 6, 8) before the resize",
        "moves": EXIF,
        "reference": dict(EXACT, exif=True, per_row_relative_l2=TOLERANCE)},
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _job(out: Path, *overrides: str, code: int = 0) -> dict:
    """The job over the option fixtures with `overrides`; its manifest. `code`: the exit code
    it must end with (3: some files in the errors table)."""
    cmd = [sys.executable, "-m", "estimator_vgg", *JOB, f"output.dir={out}", *overrides]
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != code:
        sys.exit(f"{' '.join(cmd)} exited with {r.returncode}, not {code}")
    return json.loads((out / "manifest.json").read_text())


def _rows(out: Path):
    """(paths, fc7) of a job's parquet output, read without the package's own reader."""
    import pandas as pd

    df = pd.read_parquet(out / "features")
    return df["path"].tolist(), np.stack(df["fc7"].to_numpy())


def make_options() -> None:
    images = ROOT / OPTION_IMAGES
    fixtures = {f.name: _sha256(f) for f in sorted(images.iterdir())}
    if sorted(fixtures) != sorted(EVERY):
        sys.exit(f"{OPTION_IMAGES} holds {sorted(fixtures)}, not {sorted(EVERY)}: run "
                 "tools/make_option_fixtures.py, or update EVERY here")
    rows, fingerprints = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in OPTIONS.items():
            run_manifest = _job(Path(tmp) / name, *spec["overrides"])
            paths, fc7 = _rows(Path(tmp) / name)
            if sorted(paths) != sorted(EVERY):
                sys.exit(f"{name}: rows for {paths}, not for every fixture image")
            rows[name] = (paths, fc7)
            fingerprints[name] = run_manifest["fingerprint"]["preprocessing"]
        _job(Path(tmp) / "none", "input.fallback_decoder=none", "input.max_error_fraction=1",
             code=3)
        without, _ = _rows(Path(tmp) / "none")
    if sorted(without) != sorted(set(EVERY) - set(PILLOW)):
        sys.exit(f"without the Pillow fallback the rows are {without}: the fixtures do not "
                 "show what it adds")
    default = dict(zip(*rows["default"]))
    moved, problems = {}, []
    for name, (paths, fc7) in rows.items():
        moved[name] = {}
        for p, v in zip(paths, fc7):
            d = default[p].astype(np.float64)
            rel = float(np.linalg.norm(v - d) / np.linalg.norm(d))
            cos = float(v @ d / np.linalg.norm(v) / np.linalg.norm(d))
            moved[name][p] = {"relative_l2": float(f"{rel:.3g}"), "cosine": round(cos, 6)}
            if p in OPTIONS[name]["moves"] and rel <= MIN_MOVE:
                problems.append(f"{name} moves {p} by {rel:.2g}, not more than {MIN_MOVE}")
            if p not in OPTIONS[name]["moves"] and rel > TOLERANCE:
                problems.append(f"{name} moves {p} by {rel:.2g}, more than {TOLERANCE}")
    if problems:
        sys.exit("the fixtures do not prove the options:\n  " + "\n  ".join(problems))
    OPTION_GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, (paths, fc7) in rows.items():
        np.savez(OPTION_GOLDEN / f"{name}.npz", paths=np.array(paths), fc7=fc7)
    manifest = {
        "what": "fc7 of the images in tests/fixtures/options under each preprocessing option, "
                "synthetic weights (seed 0)",
        "made_by": "tools/make_golden.py options, which runs, once per option: python -m "
                   f"estimator_vgg {' '.join(JOB)} output.dir=<tmp> <the option's overrides>",
        "job": JOB,
        "job_why": "two parts: the five JPEGs, read by TensorFlow in whole batches as local "
                   "files are (unless the option needs the Python stage), and photo.tiff with "
                   "photo.webp, read by the Python stage, which decodes them with Pillow",
        "made_on": datetime.date.today().isoformat(),
        "config": {k: v for k, v in run_manifest["config"].items() if k in ("model", "devices")},
        "versions": run_manifest["runs"][-1]["versions"],
        "fixtures": {"dir": OPTION_IMAGES, "sha256": fixtures,
                     "made_by": "tools/make_option_fixtures.py"},
        "tolerance": {"per_row_relative_l2": TOLERANCE},
        "tolerance_why": "as the demo goldens' (tests/golden/manifest.json)",
        "min_move": MIN_MOVE,
        "options": {name: {"overrides": spec["overrides"], "what": spec["what"],
                           "golden": f"{name}.npz", "moves": spec["moves"],
                           "fingerprint_preprocessing": fingerprints[name],
                           "moved_from_default": moved[name],
                           "reference": spec["reference"]}
                    for name, spec in OPTIONS.items()},
    }
    manifest["config"]["model"].pop("cache_dir")  # a path on the machine that made it
    (OPTION_GOLDEN / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(OPTIONS)} option goldens of {len(EVERY)} rows to {OPTION_GOLDEN}")


def main(which) -> None:
    for name in which or ["demo", "options"]:
        {"demo": make_demo, "options": make_options}[name]()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import argparse
    parser = argparse.ArgumentParser(description="Regenerate the golden fc7 vectors.")
    parser.add_argument("which", nargs="*", choices=["demo", "options"],
                        help="which goldens (default: both)")
    main(parser.parse_args().which)
