"""Nothing lost, nothing duplicated: bad files become error rows, reruns do only what is new,
mismatched reruns are refused (crashes and resume: test_crash.py)."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT, run_as_nobody, run_job, run_py, tables

BAD = ROOT / "tests" / "fixtures" / "bad"
# What the job must do with each fixture: None means a feature row.
EXPECTED = {
    "good.jpg": None, "good.png": None, "cmyk.jpg": None, "gray16.png": None,
    "png_named.gif": None,
    "photo_tiff.tiff": None, "photo_webp.webp": None,  # Pillow decodes them (the default)
    "truncated.jpg": "decode_error", "empty.jpg": "empty_file",
    "not_an_image.jpg": "not_an_image", "huge_header.png": "too_large",
    "links/dangling.jpg": "dangling_symlink", "links/outside.jpg": "symlink_outside_root",
}


job = run_job


@pytest.fixture()
def bad_folder(tmp_path):
    d = tmp_path / "imgs"
    shutil.copytree(BAD, d)
    (d / "links").mkdir()
    os.symlink(tmp_path / "nowhere.jpg", d / "links" / "dangling.jpg")
    shutil.copy(BAD / "good.jpg", tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", d / "links" / "outside.jpg")
    os.symlink(d / "good.jpg", d / "links" / "inside.jpg")  # inside the root: followed
    return d


def test_every_bad_file_is_one_error_row_and_the_job_goes_on(bad_folder, tmp_path):
    out = tmp_path / "out"
    r = job(tmp_path, bad_folder, out)
    assert r.returncode == 3, r.stderr[-3000:]  # 3: done, but some files failed
    feats, errors = tables(out)
    assert list(errors.columns) == ["path", "reason", "message"]
    got = dict(zip(errors["path"], errors["reason"]))
    expected_errors = {k: v for k, v in EXPECTED.items() if v}
    assert got == expected_errors
    assert sorted(feats["path"]) == sorted([k for k, v in EXPECTED.items() if not v]
                                           + ["links/inside.jpg"])
    assert not set(feats["path"]) & set(errors["path"])  # exactly one table each
    assert errors["message"].str.len().min() > 5
    msg = dict(zip(errors["path"], errors["message"]))
    assert "40000x40000" in msg["huge_header.png"] and "JPEG" in msg["truncated.jpg"]
    # TensorFlow's own words about the file, not the Python stack where the op was built
    assert msg["truncated.jpg"] == "jpeg::Uncompress failed. Invalid JPEG data or crop window."
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"files": 14, "features": 8, "errors": 6, "parts": 1}
    assert "unsupported_format" not in manifest["runs"][-1]["new_errors"]
    assert "errors      6" in r.stdout and "decode_error           1" in r.stdout


def test_without_the_fallback_decoder_tiff_and_webp_are_unsupported(bad_folder, tmp_path):
    out = tmp_path / "out"
    r = job(tmp_path, bad_folder, out, "input.fallback_decoder=none")
    assert r.returncode == 3, r.stderr[-3000:]
    _, errors = tables(out)
    got = dict(zip(errors["path"], errors["reason"]))
    assert got["photo_tiff.tiff"] == got["photo_webp.webp"] == "unsupported_format"
    assert "input.fallback_decoder: pillow" in dict(zip(errors["path"],
                                                       errors["message"]))["photo_tiff.tiff"]
    assert len(got) == 8


def test_good_rows_are_unaffected_by_bad_neighbours(bad_folder, tmp_path):
    out_bad, out_good = tmp_path / "with_bad", tmp_path / "good_only"
    good = tmp_path / "good"
    good.mkdir()
    for name in ("good.jpg", "good.png", "cmyk.jpg"):
        shutil.copy(bad_folder / name, good / name)
    assert job(tmp_path, bad_folder, out_bad).returncode == 3
    assert job(tmp_path, good, out_good).returncode == 0
    a = pd.read_parquet(out_bad / "features").set_index("path")
    b = pd.read_parquet(out_good / "features").set_index("path")
    for name in b.index:
        np.testing.assert_array_equal(a.loc[name, "fc7"], b.loc[name, "fc7"])


def test_too_many_failures_stop_the_job_loudly(bad_folder, tmp_path):
    r = job(tmp_path, bad_folder, tmp_path / "out", "input.max_error_fraction=0.1")
    assert r.returncode == 1
    assert "6 of 14 files failed (42.9%), above input.max_error_fraction=0.1" in r.stderr


def test_the_pixel_limit_is_configurable(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", imgs)   # 200 x 133
    shutil.copy(DEMO / "camera_gray.png", imgs)    # 512 x 512
    r = job(tmp_path, imgs, tmp_path / "out", "input.max_pixels=100000")
    assert r.returncode == 3
    _, errors = tables(tmp_path / "out")
    assert errors["path"].tolist() == ["camera_gray.png"]
    assert errors["reason"].tolist() == ["too_large"]


def _as_nobody_job(shared_dir, images):
    """A job over `images` run as `nobody`, writing into shared_dir/out, with a copy of the
    converted synthetic weights it may read (hard links: no second conversion)."""
    cache = shared_dir / "cache" / "checkpoints"
    shutil.copytree(ROOT / ".cache" / "checkpoints", cache, copy_function=os.link)
    for d in [shared_dir / "cache", cache, *cache.iterdir()]:
        os.chmod(d, 0o755)
    cfg = shared_dir / "job.yaml"
    cfg.write_text(f"input:\n  dir: {images}\n  max_error_fraction: 1.0\noutput:\n  dir: "
                   f"{shared_dir / 'out'}\nmodel:\n  weights: synthetic\n  cache_dir: "
                   f"{shared_dir / 'cache'}\ndevices:\n  cpus: 1\n  batch_size: 1\n")
    return run_as_nobody(shared_dir, cfg)


@pytest.fixture
def converted_weights(tmp_path):
    """The synthetic weights converted into the checkout's cache (as the jobs of the other
    tests leave them), for _as_nobody_job to link."""
    from estimator_vgg.sections import ModelConfig
    from estimator_vgg.weights import prepare
    prepare(ModelConfig(weights="synthetic", cache_dir=ROOT / ".cache"))


def test_an_unreadable_file_is_an_error_row(shared_dir, converted_weights):
    """Run as `nobody` (root reads every file whatever its permissions), a real job meets a
    file it may not read: a permission_denied row, the other file embedded."""
    imgs = shared_dir / "imgs"
    imgs.mkdir()
    shutil.copy(BAD / "good.jpg", imgs / "a.jpg")
    shutil.copy(BAD / "good.jpg", imgs / "b.jpg")
    os.chmod(imgs, 0o755)
    os.chmod(imgs / "a.jpg", 0o644)
    os.chmod(imgs / "b.jpg", 0)
    r = _as_nobody_job(shared_dir, imgs)
    assert r.returncode == 3, r.stderr[-3000:]
    feats, errors = tables(shared_dir / "out")
    assert feats["path"].tolist() == ["a.jpg"]
    assert errors["path"].tolist() == ["b.jpg"]
    assert errors["reason"].tolist() == ["permission_denied"]


def test_an_unlistable_folder_stops_the_job_naming_it(shared_dir, converted_weights):
    """Run as `nobody`, a real job meets a folder it may not list: it stops before any work,
    naming the folder (a silent skip would drop its images from the table)."""
    imgs = shared_dir / "imgs"
    (imgs / "locked").mkdir(parents=True)
    shutil.copy(BAD / "good.jpg", imgs / "a.jpg")
    shutil.copy(BAD / "good.jpg", imgs / "locked" / "b.jpg")
    os.chmod(imgs, 0o755)
    os.chmod(imgs / "a.jpg", 0o644)
    os.chmod(imgs / "locked", 0o311)   # enter, not list
    r = _as_nobody_job(shared_dir, imgs)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "cannot list" in r.stderr and "locked" in r.stderr, r.stderr[-2000:]
    assert not (shared_dir / "out" / "features").exists()


def test_classifies_permission_denied(monkeypatch, tmp_path):
    import builtins

    from estimator_vgg.probe import classify

    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    real_open = builtins.open

    def deny(path, *a, **k):
        if str(path).endswith("x.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    assert classify(tmp_path, "x.jpg", 10 ** 8) == ("permission_denied", "Permission denied")


# ---- crashes and reruns -------------------------------------------------------------------

def test_new_files_are_the_only_ones_processed_on_rerun(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", imgs / "b.jpg")
    out = tmp_path / "out"
    assert job(tmp_path, imgs, out).returncode == 0
    shutil.copy(DEMO / "chelsea_cat.JPG", imgs / "a.jpg")
    shutil.copy(DEMO / "chelsea_cat.JPG", imgs / "c.jpg")
    r = job(tmp_path, imgs, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "found 3 entries in folder" in r.stderr and "1 already done, 2 to do" in r.stderr
    feats = pd.read_parquet(out / "features")
    assert feats["path"].tolist() == ["b.jpg", "a.jpg", "c.jpg"]  # new files in a new part
    assert json.loads((out / "manifest.json").read_text())["runs"][-1]["new_files"] == 2


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", imgs)
    out = tmp_path / "out"
    assert job(tmp_path, imgs, out).returncode == 0
    r = job(tmp_path, imgs, out, "preprocess.resize=squash", "model.seed=1")
    assert r.returncode == 1
    assert "preprocessing.resize: 'center_crop' in the output, 'squash' now" in r.stderr
    assert "weights_sha256" in r.stderr and "--overwrite" in r.stderr
    r = job(tmp_path, imgs, out, "preprocess.resize=squash", "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"]["preprocessing"]["resize"] == "squash"
    assert len(manifest["runs"]) == 1


# ---- found in review: odd names, other folders, two runs at once, special files ----------

def test_a_name_that_is_not_utf8_gets_an_escaped_path_and_is_done_once(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    raw = os.path.join(os.fsencode(imgs), b"caf\xe9.jpg")
    shutil.copy(DEMO / "coffee_small.jpg", os.fsdecode(raw))
    out = tmp_path / "out"
    r = job(tmp_path, imgs, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert pd.read_parquet(out / "features")["path"].tolist() == ["caf\\xe9.jpg"]
    r = job(tmp_path, imgs, out)
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_another_input_folder_is_not_mixed_into_an_output(tmp_path):
    for name in ("cam1", "cam2"):
        (tmp_path / name).mkdir()
        shutil.copy(DEMO / "coffee_small.jpg", tmp_path / name / "IMG_0001.jpg")
    out = tmp_path / "out"
    assert job(tmp_path, tmp_path / "cam1", out).returncode == 0
    r = job(tmp_path, tmp_path / "cam2", out)
    assert r.returncode == 1 and "input_dir:" in r.stderr and "cam2" in r.stderr


def test_two_runs_cannot_write_one_output_at_once(tmp_path):
    from estimator_vgg.manifest import Fingerprint
    from estimator_vgg.store import OutputError, Store

    fp = Fingerprint.from_dict({"output_format": "parquet"})
    first = Store(tmp_path / "out", "parquet")
    first.open(fp, {}, overwrite=False)
    with pytest.raises(OutputError, match="another run is writing to output.dir"):
        Store(tmp_path / "out", "parquet").open(fp, {}, overwrite=False)


def test_a_fifo_named_like_an_image_is_an_error_row_not_a_hang(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", imgs / "a.jpg")
    os.mkfifo(imgs / "pipe.jpg")
    r = job(tmp_path, imgs, tmp_path / "out")
    assert r.returncode == 3, r.stderr[-2000:]
    errors = pd.read_parquet(tmp_path / "out" / "errors")
    assert errors["reason"].tolist() == ["not_a_file"]


def test_an_unlistable_folder_stops_the_listing_naming_it(tmp_path, monkeypatch):
    from estimator_vgg.listing import ListingError, list_images

    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ListingError, match="cannot list .*locked under input.dir"):
        list_images(tmp_path, ["jpg"])


def test_a_part_that_lost_a_batch_gets_the_rows_the_image_by_image_form_gives(tmp_path):
    """Over local files the job drops a batch whole when one of its images fails, and
    computes that part again image by image; after two such parts the rest of the run goes
    image by image. Either way every row is what the image-by-image form (the default
    input_fn) gives, to the bit, and every bad file is one error row."""
    d = tmp_path / "imgs"
    d.mkdir()
    demo = sorted(p for p in DEMO.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for n in range(24):
        shutil.copy(demo[n % len(demo)], d / f"g{n:02d}{demo[n % len(demo)].suffix}")
    truncated = (BAD / "truncated.jpg").read_bytes()
    for name in ("g02x.jpg", "g10x.jpg", "g18x.jpg"):  # in parts 1, 2 and 3 (9 rows a part)
        (d / name).write_bytes(truncated)
    out = tmp_path / "out"
    r = job(tmp_path, d, out, "devices.batch_size=2", "output.rows_per_part=9")
    assert r.returncode == 3, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert log.count("computing it again image by image") == 2
    assert "the rest of this run is decoded image by image" in log
    feats, errors = tables(out)
    assert sorted(errors["path"]) == ["g02x.jpg", "g10x.jpg", "g18x.jpg"]
    assert set(errors["reason"]) == {"decode_error"} and len(feats) == 24
    # the reference: the default input_fn, parts of 9 as the job cut them, the same Estimator
    script = tmp_path / "reference.py"
    script.write_text(f"""
import sys
import numpy as np
from estimator_vgg.config import load_config
from estimator_vgg.estimator import build_estimator
from estimator_vgg.input import input_fn
from estimator_vgg.listing import list_images
cfg = load_config({str(tmp_path / 'job.yaml')!r}, overrides=["devices.batch_size=2"])
paths = list_images(cfg.input.dir, cfg.input.extensions)
sizes = [len(paths[i:i + 9]) for i in range(0, len(paths), 9)]
rows = {{}}
for b in build_estimator(cfg).predict(input_fn(cfg, paths, part_sizes=sizes, skip_bad=True),
                                      yield_single_examples=False):
    rows.update(zip([k.decode() for k in b["path"]], b["fc7"]))
np.savez(sys.argv[1], paths=np.array(list(rows)), fc7=np.stack(list(rows.values())))
""")
    ref = run_py(script, tmp_path / "ref.npz", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = np.load(tmp_path / "ref.npz")
    assert list(feats["path"]) == list(want["paths"])
    assert np.array_equal(np.stack(feats["fc7"]), want["fc7"])
