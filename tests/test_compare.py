"""estimator-vgg compare and estimator_vgg.testing, as a CI and a user's test suite use them:
rows matched by path in any output format or golden file, one-sided rows and error rows, the
worst rows by relative L2 and cosine, the fingerprints side by side, thresholds and exit codes."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT, run_py

BASE_FP = {"model": "vgg16/fc7", "precision": "float32", "weights_sha256": "ab" * 32,
           "synthetic_weights": True,
           "preprocessing": {"recipe": "decode-rgb, resize, caffe-bgr-mean/v1",
                             "resize": "center_crop", "antialias": True, "image_size": 224,
                             "mean_bgr": [103.939, 116.779, 123.68]},
           "output_format": "parquet", "input_dir": "/imgs"}
NAMES = ["a.jpg", "b.jpg", "c.jpg", "d/e.png", "d/f.png", "g h.gif"]


def rows(seed=0, names=NAMES):
    """fc7-like rows: non-negative, about half of them zero (the ReLU's cut)."""
    rng = np.random.default_rng(seed)
    return {n: np.maximum(0, rng.standard_normal(4096) * 10).astype(np.float32) for n in names}


def write_output(out, feats, errors=(), fmt="parquet", rows_per_part=4, **fingerprint):
    """An output as the job writes it (the package's writer, its manifest), without a model:
    feature rows in the dict's order, cut into parts, then `errors` (path, reason) in the last
    part."""
    from estimator_vgg.manifest import Fingerprint, Manifest, PartRecord
    from estimator_vgg.storage import Folder
    from estimator_vgg.writer import write_part

    items = list(feats.items())
    chunks = [items[i:i + rows_per_part] for i in range(0, len(items), rows_per_part)] or [[]]
    parts = []
    for i, chunk in enumerate(chunks):
        errs = [(p, r, f"{p}: {r}") for p, r in errors] if i == len(chunks) - 1 else []
        write_part(Folder(out), fmt, i, [p for p, _ in chunk],
                   np.stack([v for _, v in chunk]) if chunk else np.empty((0, 4096)), errs)
        parts.append(PartRecord(i, len(chunk), len(errs)))
    fp = Fingerprint.from_dict({**BASE_FP, "output_format": fmt, **fingerprint})
    m = Manifest(fingerprint=fp, parts=parts, status="complete", config={"input": {"dir": "x"}})
    (out / "manifest.json").write_bytes(m.to_json())
    return out


def cli(*args):
    """`estimator-vgg compare ARGS` in this process (the console script's main(), whose return
    value is the exit code): (returncode, stdout, stderr) like a subprocess."""
    import contextlib
    import io
    import types

    from estimator_vgg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["compare", *map(str, args)])
        except SystemExit as e:    # argparse's usage errors
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def process(*args):
    """The same as a real process, as a CI runs it."""
    return run_py("-m", "estimator_vgg", "compare", *map(str, args), cwd=ROOT)


def compare_json(*args):
    r = cli(*args, "--json")
    assert r.returncode in (0, 1), r.stderr
    d = json.loads(r.stdout)
    assert d["exit_code"] == r.returncode
    return d, r.returncode


def test_the_same_rows_in_every_output_format_and_order_agree_bitwise(tmp_path):
    feats = rows()
    a = write_output(tmp_path / "a", feats)
    shuffled = dict(reversed(list(feats.items())))
    for fmt in ("npy", "csv"):
        b = write_output(tmp_path / fmt, shuffled, fmt=fmt, rows_per_part=2)
        r = cli(a, b, "--max-rel-l2", "0", "--min-cosine", "1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "6 matched by path, in another order" in r.stdout
        assert "bitwise equal rows: 6 of 6" in r.stdout and r.stdout.rstrip().endswith("AGREE")


def test_a_row_beyond_max_rel_l2_exits_1_and_is_named_first_among_the_worst(tmp_path):
    feats = rows()
    moved = dict(feats)
    moved["d/e.png"] = feats["d/e.png"] * np.float32(1.001)        # relative L2 1e-3
    moved["b.jpg"] = feats["b.jpg"] + np.float32(1e-4)             # about 1e-5
    a, b = write_output(tmp_path / "a", feats), write_output(tmp_path / "b", moved)
    r = process(a, b, "--max-rel-l2", "1e-4")
    assert r.returncode == 1, r.stdout + r.stderr
    worst = r.stdout.split("worst 5 by relative L2:\n")[1].splitlines()
    assert worst[0].split()[0] == "0.001" and worst[0].endswith("d/e.png")
    assert worst[1].endswith("b.jpg")
    assert r.stdout.rstrip().splitlines()[-1] == \
        "DIFFER: 1 of 6 rows beyond --max-rel-l2 0.0001 (worst 0.001)"
    assert process(a, b, "--max-rel-l2", "2e-3").returncode == 0
    d, code = compare_json(a, b, "--max-rel-l2", "1e-4")
    assert code == 1 and d["beyond"] == {"max_rel_l2": 1, "min_cosine": 0}
    assert d["worst_by_rel_l2"][0]["path"] == "d/e.png"
    assert d["worst_by_rel_l2"][0]["rel_l2"] == pytest.approx(1e-3, rel=1e-3)


def test_min_cosine_catches_a_row_whose_direction_moved(tmp_path):
    feats = rows()
    turned = dict(feats)
    v = feats["c.jpg"].copy()
    v[:2048] = 0                                       # half the units cut: cosine about 0.7
    turned["c.jpg"] = v
    a, b = write_output(tmp_path / "a", feats), write_output(tmp_path / "b", turned)
    r = cli(a, b, "--min-cosine", "0.99")
    assert r.returncode == 1
    worst = r.stdout.split("worst 5 by cosine:\n")[1].splitlines()[0]
    assert worst.endswith("c.jpg") and "1 of 6 rows below --min-cosine 0.99" in r.stdout
    d, _ = compare_json(a, b)
    assert d["agree"] and d["thresholds"] == {"max_rel_l2": None, "min_cosine": None,
                                              "subset": False}   # reported, not judged
    assert 0.6 < d["stats"]["cosine"]["min"] < 0.8


def test_rows_and_error_rows_on_one_side_only_are_named_and_fail(tmp_path):
    feats = rows(names=NAMES + ["x.jpg"])
    a = write_output(tmp_path / "a", {k: feats[k] for k in NAMES[:5]},
                     errors=[("x.jpg", "not_an_image"), ("y.jpg", "truncated"),
                             ("z.jpg", "not_an_image")])
    b = write_output(tmp_path / "b", {k: feats[k] for k in NAMES[:3] + NAMES[4:] + ["x.jpg"]},
                     errors=[("d/e.png", "truncated"), ("y.jpg", "unreadable"),
                             ("w.jpg", "not_an_image")])
    d, code = compare_json(a, b)
    assert code == 1
    listed = d["rows"]["listed"]
    assert d["rows"]["matched"] == 4
    assert listed["only_b"] == ["g h.gif"] and listed["only_a"] == []
    assert listed["failed_in_b_only"] == [["d/e.png", "truncated"]]
    assert listed["failed_in_a_only"] == [["x.jpg", "not_an_image"]]
    assert listed["error_rows_only_a"] == [["z.jpg", "not_an_image"]]
    assert listed["error_rows_only_b"] == [["w.jpg", "not_an_image"]]
    assert d["rows"]["failed_in_both"] == 1
    assert listed["reasons_differ"] == [["y.jpg", "truncated", "unreadable"]]
    r = cli(a, b)
    assert "only in B: g h.gif" in r.stdout and "failed in B only: d/e.png (truncated)" in r.stdout
    assert "1 rows only in B" in r.stdout.splitlines()[-1]
    # --subset: B may hold rows A has not, but every row of A must be in B as it was
    sub = write_output(tmp_path / "sub", {k: feats[k] for k in NAMES[:2]})
    assert cli(sub, b, "--subset", "--max-rel-l2", "0").returncode == 0
    assert cli(sub, b, "--max-rel-l2", "0").returncode == 1
    assert cli(b, sub, "--subset").returncode == 1


def test_the_fingerprints_are_shown_side_by_side_and_never_refused(tmp_path):
    feats = rows()
    a = write_output(tmp_path / "a", feats)
    b = write_output(tmp_path / "b", feats, precision="bfloat16",
                     preprocessing={**BASE_FP["preprocessing"], "fast_decode": True})
    r = cli(a, b, "--max-rel-l2", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.split() == ["*", "precision", "float32", "bfloat16"] for ln in lines), lines
    assert any(ln.split() == ["*", "preprocessing.fast_decode", "false", "true"]
               for ln in lines), lines
    assert any(ln.split()[:2] == ["", "weights_sha256"] or ln.startswith("  weights_sha256")
               for ln in lines)
    d, _ = compare_json(a, b)
    differs = {x["key"] for x in d["how_made"] if x["differs"]}
    assert differs == {"precision", "preprocessing.fast_decode"}


def test_a_golden_file_holds_paths_fc7_errors_and_fingerprint_and_compares_on_either_side(
        tmp_path):
    feats = rows()
    out = write_output(tmp_path / "out", feats, errors=[("bad.jpg", "not_an_image")],
                       precision="bfloat16")
    golden = tmp_path / "goldens" / "mine.npz"
    r = cli(out, "--save-golden", golden)
    assert r.returncode == 0 and "wrote 6 rows, 1 error rows and the fingerprint" in r.stdout
    with np.load(golden, allow_pickle=False) as z:    # plain numpy reads it
        assert z["paths"].tolist() == list(feats) and z["fc7"].dtype == np.float32
        assert np.array_equal(z["fc7"], np.stack(list(feats.values())))
        assert json.loads(str(z["fingerprint"][()]))["precision"] == "bfloat16"
        assert z["error_paths"].tolist() == ["bad.jpg"]
    for x, y in ((golden, out), (out, golden)):
        d, code = compare_json(x, y, "--max-rel-l2", "0")
        assert code == 0 and d["stats"]["bitwise_equal"] == 6 and d["rows"]["failed_in_both"] == 1
        assert not [k for k in d["how_made"] if k["differs"]]
    # the project's own golden (paths and fc7, no fingerprint) reads too
    d, code = compare_json(ROOT / "tests" / "golden" / "demo_fc7.npz", golden)
    assert code == 1 and d["a"]["fingerprint"] is None and d["rows"]["only_a"] == 7
    assert cli(out, golden, "--save-golden", tmp_path / "x.npz").returncode == 2


def test_inputs_that_cannot_be_read_exit_2_naming_them(tmp_path):
    out = write_output(tmp_path / "out", rows())
    (tmp_path / "empty").mkdir()
    (tmp_path / "half.npz").write_bytes(b"")
    np.savez(tmp_path / "nofc7.npz", paths=np.array(["a"]))
    cases = {tmp_path / "missing": "does not exist",
             tmp_path / "empty": "has no manifest.json: not an estimator-vgg output",
             ROOT / "README.md": "neither an estimator-vgg output folder nor a golden .npz",
             tmp_path / "half.npz": "cannot be read as a golden .npz",
             tmp_path / "nofc7.npz": "without fc7: not a golden file"}
    for bad, says in cases.items():
        r = process(bad, out) if bad.name == "missing" else cli(bad, out)
        assert r.returncode == 2 and says in r.stderr and str(bad) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "features" / "part-00001.parquet").unlink()
    r = cli(out, damaged)
    assert r.returncode == 2 and "part-00001.parquet is missing" in r.stderr, r.stderr
    r = cli(out)
    assert r.returncode == 2 and "give A and B" in r.stderr


def test_nan_rows_fail_every_threshold(tmp_path):
    feats = rows()
    broken = dict(feats)
    broken["a.jpg"] = feats["a.jpg"].copy()
    broken["a.jpg"][7] = np.nan
    a, b = write_output(tmp_path / "a", feats), write_output(tmp_path / "b", broken)
    assert cli(a, b, "--max-rel-l2", "1e9").returncode == 1
    assert cli(a, b, "--min-cosine", "-1").returncode == 1
    d, _ = compare_json(a, b, "--max-rel-l2", "1")
    assert d["stats"]["nan_rows"] == 1 and d["worst_by_rel_l2"][0]["path"] == "a.jpg"


def test_rows_of_an_appended_part_match_a_fresh_run_by_path(tmp_path):
    """Images added to input.dir after a run land in an appended part, so the resumed output
    holds its rows in another order than a fresh run: compare matches them by path."""
    from conftest import job_config

    imgs = tmp_path / "imgs"
    shutil.copytree(DEMO / "space", imgs / "space")
    cfg = job_config(tmp_path, imgs, tmp_path / "resumed")
    run = lambda *o: run_py("-m", "estimator_vgg", cfg, *o, cwd=tmp_path)  # noqa: E731
    assert run("output.format=csv").returncode == 0
    for f in ("camera_gray.png", "chelsea_cat.JPG", "coffee_small.jpg", "retina.gif"):
        shutil.copy(DEMO / f, imgs / f)
    assert run("output.format=csv").returncode == 0
    fresh = run("output.format=npy", f"output.dir={tmp_path / 'fresh'}")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    d, code = compare_json(tmp_path / "fresh", tmp_path / "resumed", "--max-rel-l2", "1e-5")
    assert code == 0, d["reasons"]
    assert d["rows"]["matched"] == 7 and d["rows"]["reordered"] is True


# --- estimator_vgg.testing: the helper for users' pytest suites --------------------------

def test_assert_features_close_fails_naming_the_worst_rows_and_the_tolerance(tmp_path):
    from estimator_vgg.testing import assert_features_close

    feats = rows()
    out = write_output(tmp_path / "out", feats)
    moved = dict(feats)
    moved["g h.gif"] = feats["g h.gif"] * np.float32(1.01)
    c = assert_features_close(out, (list(feats), np.stack(list(feats.values()))),
                              max_rel_l2=0, min_cosine=1)
    assert c.stats()["bitwise_equal"] == 6
    with pytest.raises(AssertionError) as e:
        assert_features_close((list(moved), np.stack(list(moved.values()))), out,
                              max_rel_l2=1e-4)
    msg = str(e.value)
    assert msg.startswith("fc7 differ: 1 of 6 rows beyond --max-rel-l2 0.0001 (worst 0.01)")
    worst = msg.split("worst 5 by relative L2:\n")[1].splitlines()[0]
    assert worst.split()[0] == "0.01" and worst.endswith("g h.gif")
    assert f"A (expected): {out}" in msg


def test_assert_features_close_takes_matrices_dataframes_and_golden_files(tmp_path):
    from estimator_vgg.testing import assert_features_close

    feats = rows()
    m = np.stack(list(feats.values()))
    assert_features_close(m, m.copy(), max_rel_l2=0)                  # rows by position
    with pytest.raises(AssertionError, match=r"1 rows only in A"):
        assert_features_close(m[:5], m, max_rel_l2=0)
    assert_features_close(m, m[:5], max_rel_l2=0, subset=True)   # actual may hold more
    out = write_output(tmp_path / "out", feats, fmt="npy")
    assert_features_close(pd.DataFrame({"path": list(feats), "fc7": list(m)}), out,
                          max_rel_l2=0)
    with pytest.raises(ValueError, match="give max_rel_l2 or min_cosine"):
        assert_features_close(m, m, max_rel_l2=None)
