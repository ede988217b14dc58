"""The job over collections as users hold them, against real servers on loopback: an S3 API
server (moto's server mode), an HTTP server that delays, fails and resets; lists mixing
local and remote entries, tar shards, TIFF, WebP and EXIF-rotated JPEGs."""
import io
import json
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import DEMO, ROOT, make_tar, run_py, tables
from http_files import serve
from s3_server import s3

pytestmark = pytest.mark.slow
LOOSE = ["camera_gray.png", "chelsea_cat.JPG", "coffee_small.jpg", "retina.gif"]


def run_yaml(tmp_path, input_section, out, *overrides, fault=None, name="job.yaml"):
    """The job as a user runs it, from a YAML config (synthetic weights, 2 CPU towers of
    batch 1, every failure tolerated: the tests count them)."""
    cfg = {"input": dict(max_error_fraction=1.0, **input_section),
           "output": {"dir": str(out)},
           "model": {"weights": "synthetic", "cache_dir": str(ROOT / ".cache")},
           "devices": {"cpus": 2, "batch_size": 1}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    env = {"ESTIMATOR_VGG_FAULT": fault} if fault else {}
    return run_py("-m", "estimator_vgg", path, *overrides, cwd=tmp_path, env=env)


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    """The loose demo images from a local folder: the output remote runs must equal."""
    tmp = tmp_path_factory.mktemp("local")
    d = tmp / "imgs"
    d.mkdir()
    for name in LOOSE:
        shutil.copy(DEMO / name, d / name)
    r = run_yaml(tmp, {"dir": str(d)}, tmp / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    feats, _ = tables(tmp / "out")
    return dict(zip(feats["path"], feats["fc7"]))


def _fc7(out):
    feats, errors = tables(out)
    return dict(zip(feats["path"], feats["fc7"])), errors


def test_an_s3_prefix_and_a_list_of_s3_entries_equal_the_local_folder(tmp_path, local_output):
    objects = {f"photos/set/{n}": (DEMO / n).read_bytes() for n in LOOSE}
    objects["photos/set/README.md"] = b"not an image"
    with s3(objects) as srv:
        opts = {"storage_options": srv.storage_options}
        r = run_yaml(tmp_path, {"dir": "s3://photos/set", **opts}, tmp_path / "prefix")
        assert r.returncode == 0, r.stderr[-3000:]
        lst = tmp_path / "list.csv"
        pd.DataFrame({"path": [f"s3://photos/set/{n}" for n in LOOSE]}).to_csv(lst, index=False)
        r = run_yaml(tmp_path, {"list": str(lst), **opts}, tmp_path / "list", name="l.yaml")
        assert r.returncode == 0, r.stderr[-3000:]
    by_prefix, _ = _fc7(tmp_path / "prefix")
    by_list, _ = _fc7(tmp_path / "list")
    assert sorted(by_prefix) == LOOSE  # keyed relative to the prefix, as for a folder
    for n in LOOSE:
        np.testing.assert_array_equal(by_prefix[n], local_output[n])
        np.testing.assert_array_equal(by_list[f"s3://photos/set/{n}"], local_output[n])
    # the secret is in no file the job wrote and in none of its output
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "prefix").rglob("*.json"))
    assert srv.storage_options["secret"] not in written + r.stdout + r.stderr
    manifest = json.loads((tmp_path / "list" / "manifest.json").read_text())
    assert manifest["config"]["input"]["storage_options"]["secret"] == "<redacted>"


def test_http_failures_are_retried_or_recorded_and_every_line_is_accounted_for(tmp_path,
                                                                              local_output):
    files = {f"/img/{n}": (DEMO / n).read_bytes() for n in LOOSE}
    faults = {"/img/camera_gray.png": ["500", "503"], "/img/chelsea_cat.JPG": ["reset"],
              "/img/coffee_small.jpg": ["slow"], "/img/retina.gif": ["500"] * 9}
    with serve(files, faults=faults, status={"/img/private.jpg": 403}) as srv:
        lines = [srv.url(f"/img/{n}") for n in LOOSE]
        lines += [srv.url("/img/private.jpg"), srv.url("/img/gone.jpg?sig=s3cr3t"), lines[0]]
        lst = tmp_path / "l.txt"
        lst.write_text("\n".join(lines) + "\n")
        r = run_yaml(tmp_path, {"list": str(lst), "retries": 2, "request_timeout_s": 3},
                     tmp_path / "out")
        hits = dict(srv.hits)
    assert r.returncode == 3, r.stderr[-3000:]
    fc7, errors = _fc7(tmp_path / "out")
    for n in ("camera_gray.png", "chelsea_cat.JPG", "coffee_small.jpg"):  # retried, then read
        np.testing.assert_array_equal(fc7[srv.url(f"/img/{n}")], local_output[n])
    reasons = dict(zip(errors["path"], errors["reason"]))
    assert reasons == {srv.url("/img/retina.gif"): "read_error",
                       srv.url("/img/private.jpg"): "permission_denied",
                       srv.url("/img/gone.jpg?sig=s3cr3t"): "missing",
                       srv.url("/img/camera_gray.png"): "duplicate_entry"}
    assert len(fc7) + len(errors) == len(lines)  # one row per line
    assert hits["/img/retina.gif"] == 3 and hits["/img/camera_gray.png"] == 3
    assert "s3cr3t" not in (tmp_path / "out" / "manifest.json").read_text() + r.stderr
    assert "s3cr3t" not in "".join(errors["message"])
    assert "(after 3 attempts)" in errors.set_index("reason").loc["read_error", "message"]




@pytest.fixture()
def mixed(tmp_path):
    """A folder with loose files, a tar shard, a truncated one, TIFF, WebP and an EXIF-rotated
    JPEG (with the PNG of what it shows), and the PNGs their pixels must equal."""
    from PIL import Image

    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for n in LOOSE[:2]:
        shutil.copy(DEMO / n, d / n)
    shard = make_tar([(f"s/{n}", (DEMO / n).read_bytes()) for n in LOOSE])
    (d / "shard.tar").write_bytes(shard)
    with tarfile.open(fileobj=io.BytesIO(shard)) as t:
        cut = t.getmember("s/coffee_small.jpg").offset_data + 50
    (d / "cut.tar").write_bytes(shard[:cut])
    photo = Image.open(DEMO / "chelsea_cat.JPG").convert("RGB")
    photo.save(d / "sub" / "cat.tiff")
    photo.save(d / "sub" / "cat.webp", lossless=True)
    photo.save(tmp_path / "cat.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left: shown after a quarter turn clockwise
    photo.transpose(Image.Transpose.ROTATE_90).save(d / "sub" / "turned.jpg", quality=95,
                                                    exif=exif.tobytes())
    import tensorflow as tf
    stored = tf.io.decode_jpeg((d / "sub" / "turned.jpg").read_bytes(), channels=3).numpy()
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(tmp_path / "upright.png")
    return d


def test_a_list_of_every_kind_of_entry_gives_one_row_per_line_in_its_order(tmp_path, mixed,
                                                                          local_output):
    with serve({"/r/coffee_small.jpg": (DEMO / "coffee_small.jpg").read_bytes(),
                "/r/shard.tar": (mixed / "shard.tar").read_bytes()}) as srv:
        lines = ["camera_gray.png",                       # relative to input.dir
                 str(mixed / "chelsea_cat.JPG"),          # absolute
                 srv.url("/r/coffee_small.jpg"),          # remote
                 "camera_gray.png",                       # a repeat
                 "missing.jpg",                           # not there
                 "shard.tar", "cut.tar", srv.url("/r/shard.tar"),  # tars, local and remote
                 "sub/cat.tiff", "sub/cat.webp", "sub/turned.jpg"]
        lst = tmp_path / "l.jsonl"
        pd.DataFrame({"file": lines}).to_json(lst, orient="records", lines=True)
        r = run_yaml(tmp_path, {"list": str(lst), "dir": str(mixed), "path_column": "file",
                                "expand_tars": True}, tmp_path / "out",
                     "preprocess.exif_orientation=true")
        dry = run_py("-m", "estimator_vgg", tmp_path / "job.yaml", "--dry-run", cwd=tmp_path)
        remote_shard = srv.url("/r/shard.tar")
    assert r.returncode == 3, r.stderr[-3000:]
    fc7, errors = _fc7(tmp_path / "out")
    tar_rows = [f"{t}/s/{n}" for t in ("shard.tar", remote_shard) for n in LOOSE]
    assert sorted(fc7) == sorted(["camera_gray.png", str(mixed / "chelsea_cat.JPG"),
                                  srv.url("/r/coffee_small.jpg"), "cut.tar/s/camera_gray.png",
                                  "cut.tar/s/chelsea_cat.JPG", *tar_rows, "sub/cat.tiff",
                                  "sub/cat.webp", "sub/turned.jpg"])
    assert dict(zip(errors["path"], errors["reason"])) == {
        "camera_gray.png": "duplicate_entry", "missing.jpg": "missing",
        "cut.tar/": "bad_archive"}
    feats = pd.read_parquet(tmp_path / "out" / "features")
    order = feats["path"].tolist()
    assert order.index("camera_gray.png") < order.index(str(mixed / "chelsea_cat.JPG")) \
        < order.index(tar_rows[0]) < order.index("sub/cat.tiff")  # the list's order
    for t in ("shard.tar", remote_shard):
        for n in LOOSE:
            np.testing.assert_array_equal(fc7[f"{t}/s/{n}"], local_output[n])
    assert "(11 lines" in dry.stdout and "5 remote, 3 tars, 1 repeated" in dry.stdout
    # Pillow's TIFF and lossless WebP are the very pixels of the PNG; the EXIF-rotated JPEG
    # equals its pixels turned upright
    lst.write_text(json.dumps({"file": str(tmp_path / "cat.png")}) + "\n"
                   + json.dumps({"file": str(tmp_path / "upright.png")}) + "\n")
    r = run_yaml(tmp_path, {"list": str(lst), "path_column": "file"}, tmp_path / "ref",
                 "preprocess.exif_orientation=true", name="ref.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    ref, _ = _fc7(tmp_path / "ref")
    for n in ("sub/cat.tiff", "sub/cat.webp"):
        np.testing.assert_array_equal(fc7[n], ref[str(tmp_path / "cat.png")], err_msg=n)
    np.testing.assert_array_equal(fc7["sub/turned.jpg"], ref[str(tmp_path / "upright.png")])


def test_a_rerun_of_an_appended_list_does_only_the_new_lines(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("camera_gray.png\ncoffee_small.jpg\n")
    inp = {"list": str(lst), "dir": str(DEMO)}
    assert run_yaml(tmp_path, inp, tmp_path / "out").returncode == 0
    lst.write_text("camera_gray.png\ncoffee_small.jpg\nretina.gif\ncamera_gray.png\n")
    r = run_yaml(tmp_path, inp, tmp_path / "out")
    assert r.returncode == 3 and "done, 2 new files" in r.stdout, r.stdout + r.stderr[-2000:]
    fc7, errors = _fc7(tmp_path / "out")
    assert sorted(fc7) == ["camera_gray.png", "coffee_small.jpg", "retina.gif"]
    assert errors["reason"].tolist() == ["duplicate_entry"]
    lst.write_text("camera_gray.png\nchanged.jpg\nretina.gif\ncamera_gray.png\n")
    r = run_yaml(tmp_path, inp, tmp_path / "out")
    assert r.returncode == 2
    assert "line 2 was 'coffee_small.jpg'" in r.stderr and "'changed.jpg'" in r.stderr


def test_an_output_made_before_the_pillow_fallback_resumes_only_with_it_off(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", d)
    assert run_yaml(tmp_path, {"dir": str(d), "fallback_decoder": "none"},
                    tmp_path / "out").returncode == 0
    fp = json.loads((tmp_path / "out" / "manifest.json").read_text())["fingerprint"]
    assert "fallback_decoder" not in fp["preprocessing"]  # as outputs made before it
    r = run_yaml(tmp_path, {"dir": str(d)}, tmp_path / "out")
    assert r.returncode == 1 and "To resume it, run with input.fallback_decoder=none" in r.stderr


@pytest.mark.timeout(400)
def test_a_killed_remote_list_run_resumes_to_the_uninterrupted_output(tmp_path):
    names = [p.name for p in sorted(DEMO.rglob("*")) if p.suffix.lower() in
             (".jpg", ".png", ".gif", ".bmp")]
    files = {f"/{n}": p.read_bytes() for p in sorted(DEMO.rglob("*")) for n in [p.name]
             if n in names}
    with serve(files, faults={"/chelsea_cat.JPG": ["500"]}) as srv:
        lst = tmp_path / "l.txt"
        lst.write_text("".join(srv.url(f"/{n}") + "\n" for n in names))
        inp = {"list": str(lst)}
        whole = run_yaml(tmp_path, inp, tmp_path / "whole", "output.rows_per_part=2")
        assert whole.returncode == 0, whole.stderr[-3000:]
        srv.faults["/chelsea_cat.JPG"] = ["500"]  # every run meets a transient failure
        killed = run_yaml(tmp_path, inp, tmp_path / "out", "output.rows_per_part=2",
                          fault="part_files:2")
        assert killed.returncode != 0 and (tmp_path / "out" / "manifest.json").is_file()
        srv.faults["/chelsea_cat.JPG"] = ["500"]
        again = run_yaml(tmp_path, inp, tmp_path / "out", "output.rows_per_part=2")
        assert again.returncode == 0, again.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "whole" / "features")
    b = pd.read_parquet(tmp_path / "out" / "features")
    assert a["path"].tolist() == b["path"].tolist() == [srv.url(f"/{n}") for n in names]
    np.testing.assert_array_equal(np.stack(a["fc7"]), np.stack(b["fc7"]))


def test_a_remote_tar_whose_headers_cannot_be_read_stops_before_any_work(tmp_path):
    from conftest import make_config
    from estimator_vgg import sources
    from estimator_vgg.listing import ListingError

    shard = make_tar([(f"s/{n}", (DEMO / n).read_bytes()) for n in LOOSE])
    with serve({"/s.tar": shard}, faults={"/s.tar": ["ok"] + ["500"] * 20}) as srv:
        lst = tmp_path / "l.txt"
        lst.write_text(srv.url("/s.tar?sig=s3cr3t") + "\n" + srv.url("/gone.tar") + "\n")
        cfg = make_config(tmp_path, input={"list": str(lst), "expand_tars": True,
                                           "retries": 1})
        with pytest.raises(ListingError, match="cannot read the headers of the tar") as e:
            sources.build(cfg.input)
        assert "s3cr3t" not in str(e.value)
        srv.faults.clear()  # the server answers again: the members, and the missing tar's row
        listing = sources.build(cfg.input)
    assert [k.rsplit("/", 1)[-1] for k in listing.keys[:4]] == LOOSE
    assert listing.preset == {4: listing.preset[4]} and listing.preset[4][0] == "missing"


def test_only_the_parts_that_need_python_go_through_it(tmp_path, local_output):
    from PIL import Image

    d = tmp_path / "imgs"
    (d / "zz").mkdir(parents=True)
    for n in LOOSE:
        shutil.copy(DEMO / n, d / n)
    Image.open(DEMO / "chelsea_cat.JPG").save(d / "zz" / "cat.webp", lossless=True)
    r = run_yaml(tmp_path, {"dir": str(d)}, tmp_path / "out", "output.rows_per_part=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 parts (1 read by the Python stage, 32 threads)" in r.stderr
    fc7, _ = _fc7(tmp_path / "out")
    for n in LOOSE:  # read by TensorFlow, as from a folder of JPEGs, PNGs and GIFs only
        np.testing.assert_array_equal(fc7[n], local_output[n])
    assert "zz/cat.webp" in fc7


def test_neighbors_pages_read_list_entries_uris_and_tar_members_back(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "shard.tar").write_bytes(make_tar([(f"s/{n}", (DEMO / n).read_bytes())
                                            for n in LOOSE[:2]]))
    with serve({"/r/coffee_small.jpg": (DEMO / "coffee_small.jpg").read_bytes()}) as srv:
        lst = tmp_path / "l.txt"
        lst.write_text(f"{srv.url('/r/coffee_small.jpg?sig=s3cr3t')}\nshard.tar\n"
                       f"{DEMO / 'retina.gif'}\n")
        r = run_yaml(tmp_path, {"list": str(lst), "dir": str(d), "expand_tars": True},
                     tmp_path / "out")
        assert r.returncode == 0, r.stderr[-3000:]
        page = tmp_path / "page.html"
        q = run_py("-m", "estimator_vgg", "neighbors", tmp_path / "out", "shard.tar/s/" + LOOSE[0],
                   "-k", "3", "--exact", "--html", page, cwd=tmp_path)
        assert q.returncode == 0, q.stderr[-3000:]
    text = page.read_text()
    assert text.count("data:image/jpeg;base64,") == 4 and "no preview" not in text  # query + 3
    assert "s3cr3t" not in q.stderr
