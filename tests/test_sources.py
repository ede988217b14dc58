"""Collections as users hold them: list files, tar shards, duplicates, appended lists, EXIF,
the remote extra's absence (units; the job over real servers: test_remote.py)."""
import io
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, make_config, make_tar, run_cli_without
from estimator_vgg import sources
from estimator_vgg.config import ConfigError
from estimator_vgg.storage import Folder

ENTRIES = ["chelsea_cat.JPG", "space/astronaut.png", "coffee_small.jpg", "chelsea_cat.JPG"]


def _write_list(path, entries, column="path"):
    frame = pd.DataFrame({column: entries, "label": range(len(entries))})
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        path.write_text("".join(e + "\n" for e in entries))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".txt"])
def test_every_list_format_gives_its_entries_in_order_with_repeats_marked(tmp_path, suffix):
    lst = _write_list(tmp_path / f"list{suffix}", ENTRIES)
    listing = sources.build(make_config(tmp_path, input={"list": str(lst)}).input)
    assert listing.kind == "list" and listing.keys == ENTRIES and listing.lines == ENTRIES
    assert listing.where[0].target == str(DEMO / "chelsea_cat.JPG")
    first, dup = ("row 1", "row 4") if suffix in (".csv", ".tsv", ".parquet") else \
        ("line 1", "line 4")
    assert listing.preset == {3: ("duplicate_entry", f"{dup} repeats {first}; the entry was "
                                  f"processed once")}
    assert listing.where[3] is None  # never read again


def test_an_unusable_list_is_a_config_error_naming_the_file_and_what_it_holds(tmp_path):
    lst = _write_list(tmp_path / "l.csv", ENTRIES, column="file")
    with pytest.raises(ConfigError, match=r"l.csv has no column 'path' \(input.path_column\); "
                                          r"its columns: file, label"):
        sources.build(make_config(tmp_path, input={"list": str(lst)}).input)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty.txt names no image"):
        sources.build(make_config(tmp_path, input={"list": str(tmp_path / "empty.txt")}).input)
    with pytest.raises(ConfigError, match="input.list: file .*nope.csv does not exist"):
        make_config(tmp_path, input={"list": str(tmp_path / "nope.csv")})
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="cannot read .*bad.parquet as parquet"):
        sources.build(make_config(tmp_path, input={"list": str(tmp_path / "bad.parquet")}).input)
    from estimator_vgg.config import load_config
    rel = _write_list(tmp_path / "rel.txt", [str(DEMO / "coffee_small.jpg"), "a/b.jpg"])
    cfg = load_config(None, input={"list": str(rel)}, output={"dir": str(tmp_path / "o")},
                      model={"weights": "synthetic"})
    with pytest.raises(ConfigError, match=r"line 2 \('a/b.jpg'\) is a relative path, and "
                                          r"input.dir is not set"):
        sources.build(cfg.input)


def test_a_resumed_list_redoes_exactly_the_lines_no_row_accounts_for():
    listing = sources.Listing("list")
    for n, key in enumerate(["a", "b", "a", "c", "a"]):
        dup = ("duplicate_entry", "") if key == "a" and n else None
        listing.add(key, None if dup else sources.Where(key), dup)
    # committed: a (features), b (error), the first repeat of a
    assert sources.todo(listing, Counter({"a": 1, "b": 1}), Counter({"a": 1})) == [3, 4]
    assert sources.todo(listing, Counter(), Counter()) == [0, 1, 2, 3, 4]


def test_a_list_may_grow_by_appending_and_nothing_else(tmp_path):
    lst = _write_list(tmp_path / "l.txt", ENTRIES[:3])
    cfg = make_config(tmp_path, input={"list": str(lst)})
    out = tmp_path / "out"
    out.mkdir()
    sources.check_appended(sources.build(cfg.input), Folder(out))
    _write_list(lst, ENTRIES)  # one line appended: fine
    sources.check_appended(sources.build(cfg.input), Folder(out))
    _write_list(lst, [ENTRIES[0], "camera_gray.png", *ENTRIES[2:]])
    with pytest.raises(ConfigError, match=r"line 2 was 'space/astronaut.png' in the list "
                                          r"output.dir .* is now 'camera_gray.png'"):
        sources.check_appended(sources.build(cfg.input), Folder(out))
    _write_list(lst, ENTRIES[:2])
    with pytest.raises(ConfigError, match="entry 3 was 'coffee_small.jpg' .* missing"):
        sources.check_appended(sources.build(cfg.input), Folder(out))




def test_a_tar_shard_is_its_image_members_and_a_damaged_one_says_where(tmp_path):
    jpg = (DEMO / "coffee_small.jpg").read_bytes()
    png = (DEMO / "camera_gray.png").read_bytes()
    whole = make_tar([("x/a.jpg", jpg), ("notes.txt", b"hello"), ("x/b.png", png)])
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "shard.tar").write_bytes(whole)
    with tarfile.open(fileobj=io.BytesIO(whole)) as t:
        b_at = t.getmember("x/b.png").offset_data
    (d / "cut.tar").write_bytes(whole[:b_at + 100])  # cut inside b.png's data
    (d / "loose.jpg").write_bytes(jpg)
    cfg = make_config(tmp_path, input={"dir": str(d), "expand_tars": True})
    listing = sources.build(cfg.input)
    assert listing.keys == ["cut.tar/x/a.jpg", "cut.tar/", "loose.jpg", "shard.tar/x/a.jpg",
                            "shard.tar/x/b.png"]
    assert listing.preset[1][0] == "bad_archive" and "truncated" in listing.preset[1][1]
    member = listing.where[3]
    data = (d / "shard.tar").read_bytes()[member.offset:member.offset + member.size]
    assert data == jpg and listing.tars == 2
    # without expand_tars a tar is not an image: not listed
    assert sources.build(make_config(tmp_path, input={"dir": str(d)}).input).keys == ["loose.jpg"]


def test_a_tar_that_reads_otherwise_on_a_rerun_keeps_its_earlier_rows(tmp_path, caplog):
    """A list line naming a tar is one account: the rows an earlier run committed for it
    stand, whether the tar has appeared since (failed entries are not retried) or gone."""
    jpg = (DEMO / "coffee_small.jpg").read_bytes()
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "loose.jpg").write_bytes(jpg)
    lst = _write_list(tmp_path / "l.txt", ["shard.tar", "loose.jpg"])
    cfg = make_config(tmp_path, input={"dir": str(d), "list": str(lst), "expand_tars": True})
    gone = sources.build(cfg.input)  # no tar yet: one row `missing` for its line
    assert gone.keys == ["shard.tar", "loose.jpg"] and gone.preset[0][0] == "missing"
    (d / "shard.tar").write_bytes(make_tar([("a.jpg", jpg), ("b.jpg", jpg)]))
    there = sources.build(cfg.input)
    assert there.keys == ["shard.tar/a.jpg", "shard.tar/b.jpg", "loose.jpg"]
    # the first run committed the `missing` row: the tar that appeared adds nothing
    assert sources.todo(there, Counter({"shard.tar": 1, "loose.jpg": 1}), Counter()) == []
    assert "could not be read on an earlier run" in caplog.text
    # a run that read the tar, then the tar was deleted: its rows stand, no `missing` row
    done = Counter({"shard.tar/a.jpg": 1, "shard.tar/b.jpg": 1, "loose.jpg": 1})
    assert sources.todo(there, done, Counter()) == []
    assert sources.todo(gone, done, Counter()) == []
    assert "cannot be read now (missing); its 2 row(s) from an earlier run" in caplog.text
    # otherwise resuming is as for any entry: a crash after a.jpg redoes b.jpg and loose.jpg
    assert sources.todo(there, Counter({"shard.tar/a.jpg": 1}), Counter()) == [1, 2]
    assert sources.todo(gone, Counter(), Counter()) == [0, 1]


def test_the_exif_orientation_is_read_from_the_jpeg_header():
    from PIL import Image

    from estimator_vgg.reader import jpeg_orientation

    im = Image.open(DEMO / "coffee_small.jpg")
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        im.save(buf, "JPEG", exif=exif.tobytes())
        assert jpeg_orientation(buf.getvalue()) == o
    assert jpeg_orientation((DEMO / "coffee_small.jpg").read_bytes()) == 1
    assert jpeg_orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM") == 1  # cut short


def test_orient_turns_the_image_as_pillow_does():
    import tensorflow as tf
    from PIL import Image, ImageOps

    from estimator_vgg.preprocess import orient

    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for o in range(1, 9):
        im = Image.fromarray(pixels)
        exif = im.getexif()
        exif[0x0112] = o
        im.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(orient(tf.constant(pixels), tf.constant(o)).numpy(),
                                      want, err_msg=f"orientation {o}")


def test_a_uri_without_the_remote_extra_stops_before_any_work_saying_how_to_install(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("s3://bucket/a.jpg\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input:\n  list: {lst}\noutput:\n  dir: {tmp_path / 'out'}\n"
                   f"model:\n  weights: synthetic\n")
    r = run_cli_without("s3fs", cfg, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "s3://bucket/a.jpg needs s3fs, which is not installed" in r.stderr
    assert "ESTIMATOR_VGG_REMOTE=1 ./run.sh" in r.stderr
    assert not (tmp_path / "out").exists()
    # a scheme nothing handles, even with the extra, is a row of its own; its repeat (after a
    # blank line, which is no entry) is a repeat like any other
    lst.write_text("nosuch://x/a.jpg\n\nnosuch://x/a.jpg\n")
    listing = sources.build(make_config(tmp_path, input={"list": str(lst)}).input)
    assert listing.preset[0][0] == "unsupported_uri"
    assert listing.preset[1] == ("duplicate_entry", "line 3 repeats line 1; the entry was "
                                 "processed once")


def test_secrets_are_redacted_in_the_recorded_config_and_command(tmp_path):
    from estimator_vgg.remote import redact
    from estimator_vgg.runner import recorded_command

    cfg = make_config(tmp_path, input={"storage_options": {"key": "AKIA", "secret": "s3cr3t"},
                                       "list": "https://h/l.csv?X-Amz-Signature=abc"})
    d = cfg.to_dict()["input"]
    assert d["storage_options"] == {"key": "<redacted>", "secret": "<redacted>"}
    assert "abc" not in d["list"]
    assert recorded_command(["x", "input.storage_options.secret=s3cr3t",
                             "input.list=https://h/l.csv?sig=abc"]) == [
        "x", "input.storage_options.secret=<redacted>", "input.list=https://h/l.csv?<redacted>"]
    assert redact("get https://h/a.jpg?sig=1&t=2 failed") == "get https://h/a.jpg?<redacted> failed"
