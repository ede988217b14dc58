"""The job, run as a user runs it, still gives the golden fc7 vectors of the demo images;
every output format holds the same rows."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT, run_py
from estimator_vgg.testing import assert_features_close

GOLDEN = ROOT / "tests" / "golden"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`python -m estimator_vgg configs/demo.yaml` into a temporary output.dir (parquet)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_py("-m", "estimator_vgg", ROOT / "configs" / "demo.yaml", f"output.dir={out}",
               cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_demo_features_match_golden_vectors(demo_run):
    out, _ = demo_run
    golden = np.load(GOLDEN / "demo_fc7.npz")
    tol = json.loads((GOLDEN / "manifest.json").read_text())["tolerance"]["per_row_relative_l2"]
    df = pd.read_parquet(out / "features")
    assert list(df.columns) == ["path", "fc7"]
    assert df["path"].tolist() == golden["paths"].tolist()   # in the listing's order
    fc7 = np.stack(df["fc7"].to_numpy())
    assert fc7.dtype == np.float32 and fc7.shape == (len(df), 4096)
    # per row |fc7 - golden| / |golden| <= tol, the users' helper (estimator_vgg.testing)
    assert_features_close(out, GOLDEN / "demo_fc7.npz", max_rel_l2=tol)


def test_golden_vectors_are_what_eager_keras_computes_from_the_image_files(tmp_path,
                                                                           seed_arrays):
    """The goldens are right, not only unchanged: eager Keras VGG16 (its own loader of the
    published .h5 layout, its own Caffe preprocess_input), fed by a decode and center crop
    written in the test, gives the golden rows for the seed's weights."""
    from weight_files import write_published_h5

    golden = np.load(GOLDEN / "demo_fc7.npz")
    h5 = tmp_path / "published.h5"
    write_published_h5(seed_arrays, h5)
    out = tmp_path / "keras.npy"
    r = run_py(ROOT / "tests" / "keras_side.py", "files", h5, DEMO, out,
               *golden["paths"].tolist(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tol = json.loads((GOLDEN / "manifest.json").read_text())["tolerance"]["per_row_relative_l2"]
    assert_features_close((golden["paths"].tolist(), np.load(out)), GOLDEN / "demo_fc7.npz",
                          max_rel_l2=tol)


def test_demo_run_says_its_weights_are_synthetic(demo_run):
    out, r = demo_run
    assert "NOT ImageNet fc7" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"files": 7, "features": 7, "errors": 0, "parts": 1}
    assert manifest["fingerprint"]["synthetic_weights"] is True
    assert pd.read_parquet(out / "errors").empty  # the errors table exists, and is empty


def test_every_demo_image_is_one_row_with_its_path_as_on_disk(demo_run):
    out, _ = demo_run
    on_disk = sorted(str(p.relative_to(ROOT / "demo_images")).replace("\\", "/")
                     for p in (ROOT / "demo_images").rglob("*") if p.suffix.lower() in
                     (".jpg", ".jpeg", ".png", ".gif", ".bmp"))
    assert pd.read_parquet(out / "features")["path"].tolist() == on_disk
    assert "chelsea_cat.JPG" in on_disk and "space/astronaut fade.png" in on_disk


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_npy_and_csv_outputs_hold_the_same_rows_as_parquet(fmt, demo_run, tmp_path):
    from estimator_vgg.output import read_features

    parquet_out, _ = demo_run
    out = tmp_path / fmt
    r = run_py("-m", "estimator_vgg", ROOT / "configs" / "demo.yaml", f"output.dir={out}",
               f"output.format={fmt}", "output.rows_per_part=3", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    paths, fc7 = read_features(out)
    ref_paths, ref = read_features(parquet_out)
    assert paths == ref_paths
    # Parts of 3 are batched on their own, so batches differ from the one-part run: equal up
    # to float rounding, not bitwise.
    assert_features_close((paths, fc7), (ref_paths, ref), max_rel_l2=1e-5)
    if fmt == "csv":
        first = pd.read_csv(out / "features" / "part-00000.csv")
        assert list(first.columns[:3]) == ["path", "vgg0", "vgg1"]
        assert first.columns[-1] == "vgg4095" and len(first) == 3
    else:
        m = np.load(out / "features" / "part-00000.npy")
        assert m.dtype == np.float32 and m.shape == (3, 4096)
