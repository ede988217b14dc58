"""Every preprocessing option, set as a user sets it (an override of the job's config), reaches
the job's own preprocessing and gives its golden fc7 vectors; and the goldens are right: what a
preprocessing written in the test gives, or for the DCT options the exact path's within the
fidelity docs/devices.md documents. The images (tests/fixtures/options) and goldens
(tests/golden/options) are made by tools/make_option_fixtures.py and tools/make_golden.py."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, rel_diff, run_py

GOLDEN = ROOT / "tests" / "golden" / "options"
FIXTURES = ROOT / "tests" / "fixtures" / "options"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
TOL = MANIFEST["tolerance"]["per_row_relative_l2"]
OPTIONS = list(MANIFEST["options"])

# The job once per option, each exactly as `python -m estimator_vgg ARGS` runs it
# (estimator_vgg.cli.main(ARGS)), in one process: one TensorFlow start-up for all six instead of
# six (docs/development.md has the times). The goldens were made by a process per job, so this
# also shows that a job leaves nothing behind in its process that changes the next one's rows.
JOBS = """
import json, sys
from estimator_vgg.cli import main
for name, argv in json.loads(sys.argv[1]).items():
    code = main(argv)
    if code:
        sys.exit(f"the job with {name} exited with {code}")
"""


@pytest.fixture(scope="module")
def option_runs(tmp_path_factory):
    """{option: its output.dir}: the job the goldens were made with (configs/demo.yaml over
    the fixtures), with the option's overrides, the way a user sets them."""
    out = tmp_path_factory.mktemp("options")
    jobs = {name: [*MANIFEST["job"], f"output.dir={out / name}", *spec["overrides"]]
            for name, spec in MANIFEST["options"].items()}
    r = run_py("-c", JOBS, json.dumps(jobs), cwd=ROOT, timeout=200)
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: out / name for name in jobs}


def test_the_option_fixtures_are_the_files_the_goldens_were_made_from():
    on_disk = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
               for f in sorted(FIXTURES.iterdir())}
    assert on_disk == MANIFEST["fixtures"]["sha256"], (
        "tests/fixtures/options is not what its goldens were made from: regenerate both "
        "(tools/make_option_fixtures.py, then tools/make_golden.py options) and say why in "
        "the commit")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("option", OPTIONS)
def test_each_preprocessing_option_set_in_the_config_gives_its_golden_vectors(option,
                                                                              option_runs):
    """Rows for every fixture (photo.tiff and photo.webp through the Pillow fallback, on by
    default), each within the goldens' tolerance of its option's golden; the images the option
    changes are not at the default's fc7 (else the option never reached the preprocessing);
    the output's fingerprint records the option."""
    spec = MANIFEST["options"][option]
    golden = np.load(GOLDEN / spec["golden"])
    df = pd.read_parquet(option_runs[option] / "features")
    paths = df["path"].tolist()
    assert paths == golden["paths"].tolist()
    fc7 = np.stack(df["fc7"].to_numpy())
    default = np.load(GOLDEN / "default.npz")
    assert default["paths"].tolist() == paths
    as_default = [p for p, d in zip(paths, rel_diff(fc7, default["fc7"]))
                  if p in spec["moves"] and d <= TOL]
    assert not as_default, f"{spec['overrides']} did not reach the preprocessing of {as_default}"
    drift = rel_diff(fc7, golden["fc7"])
    assert drift.max() <= TOL, dict(zip(paths, drift))
    fingerprint = json.loads((option_runs[option] / "manifest.json").read_text())["fingerprint"]
    assert fingerprint["preprocessing"] == spec["fingerprint_preprocessing"]


def _scaled(name: str, min_side: int) -> bool:
    """Whether the DCT options scale this fixture: a JPEG whose shorter side is min_side or
    more (read by Pillow, not by the job's code)."""
    from PIL import Image

    with Image.open(FIXTURES / name) as im:
        return im.format == "JPEG" and min(im.size) >= min_side


@pytest.mark.timeout(300)
def test_option_goldens_are_what_a_preprocessing_written_in_the_test_gives(tmp_path,
                                                                          seed_arrays):
    """Eager Keras VGG16 (its own loader of the published .h5 layout, its own Caffe
    preprocess_input) fed by tests/keras_side.py's decode (TensorFlow's; Pillow's for what
    only Pillow opens), EXIF turn (Pillow's exif_transpose) and resize (tf.image.resize with
    the option's method and antialias, center_crop or squash written from their description)
    gives every option's golden rows at the tolerance. For jpeg_dct_scaling and fast_decode
    the reference is the exact path: the images they scale are within the documented cosine
    of it, and not at it (the golden is scaled), the others at the tolerance."""
    from weight_files import write_published_h5

    h5 = tmp_path / "published.h5"
    write_published_h5(seed_arrays, h5)
    paths = sorted(f.name for f in FIXTURES.iterdir())

    def kind(reference):  # the references' ways of preprocessing, each computed once
        return "{resize}_antialias{antialias:d}_exif{exif:d}".format(**reference)

    spec = {kind(s["reference"]): dict(s["reference"], paths=paths)
            for s in MANIFEST["options"].values()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    r = run_py(ROOT / "tests" / "keras_side.py", "options", h5, FIXTURES, tmp_path / "ref.npz",
               tmp_path / "spec.json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    computed = np.load(tmp_path / "ref.npz")
    for option, s in MANIFEST["options"].items():
        golden = np.load(GOLDEN / s["golden"])
        rows = dict(zip(paths, computed[kind(s["reference"])]))
        ref = np.stack([rows[p] for p in golden["paths"]])
        drift = dict(zip(golden["paths"], rel_diff(golden["fc7"], ref)))
        scaled = []
        if "scaled_min_side" in s["reference"]:
            scaled = [p for p in paths if _scaled(p, s["reference"]["scaled_min_side"])]
            assert sorted(scaled) == sorted(s["moves"]), (option, scaled)
        for p, g in zip(golden["paths"], golden["fc7"]):
            if p in scaled:
                cos = float(g @ rows[p] / np.linalg.norm(g) / np.linalg.norm(rows[p]))
                assert s["reference"]["scaled_min_cosine"] <= cos and drift[p] > TOL, (
                    option, p, cos, drift[p])
            else:
                assert drift[p] <= TOL, (option, p, drift[p])
