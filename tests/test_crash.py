"""Nothing lost, nothing duplicated on a crash: a job SIGKILLed at every step of a commit (and
from outside) resumes to the exact output of an uninterrupted one, in every output format;
readers never see a killed run's leftovers; a damaged output says so."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO, ROOT, job_config, run_job, tables

BAD = ROOT / "tests" / "fixtures" / "bad"
job = run_job

@pytest.fixture(scope="module")
def crash_inputs(tmp_path_factory):
    """7 demo images and 2 bad files in 5 parts of 2 (rows_per_part=2)."""
    d = tmp_path_factory.mktemp("crash") / "imgs"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(BAD / "truncated.jpg", d / "space" / "broken.jpg")
    shutil.copy(BAD / "not_an_image.jpg", d / "zzz_last.jpg")
    return d


@pytest.fixture(scope="module")
def uninterrupted(crash_inputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "out"
    r = job(tmp, crash_inputs, out, "output.rows_per_part=2")
    assert r.returncode == 3, r.stderr[-3000:]
    return tables(out)


def _same_output(out, uninterrupted):
    feats, errors = tables(out)
    ref_feats, ref_errors = uninterrupted
    assert feats["path"].tolist() == ref_feats["path"].tolist()
    np.testing.assert_array_equal(np.stack(feats["fc7"]), np.stack(ref_feats["fc7"]))
    pd.testing.assert_frame_equal(errors, ref_errors)
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


@pytest.mark.parametrize("fault", [
    "batch:3",          # mid-part: rows computed, not yet written
    "features_tmp:2",   # mid-write: a part's features file half-committed
    "part_files:2",     # a part's files renamed, the manifest not yet updated
    "manifest:3",       # between parts
])
def test_a_killed_job_resumes_to_the_uninterrupted_output(fault, crash_inputs, uninterrupted,
                                                         tmp_path):
    out = tmp_path / "out"
    killed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2")
    assert resumed.returncode == 3, resumed.stderr[-3000:]
    _same_output(out, uninterrupted)


# Kills at points drawn at random, from a seed the run logs (set ESTIMATOR_VGG_CRASH_SEED to
# replay one): each CI run kills the job somewhere else. The job reaches each point at least
# this often with 9 files in 5 parts of 2 and 2 towers of batch 1.
CRASH_SEED = int(os.environ.get("ESTIMATOR_VGG_CRASH_SEED") or time.time_ns() % 100_000)
REACHED = {"batch": 4, "features_tmp": 5, "part_files": 5, "manifest": 5}


def _drawn(seed: int, n: int = 2):
    import random
    rnd = random.Random(seed)
    points = sorted(REACHED)
    return [f"{p}:{rnd.randint(1, REACHED[p])}" for p in (rnd.choice(points) for _ in range(n))]


@pytest.mark.parametrize("draw", [0, 1])
def test_a_job_killed_at_a_point_drawn_from_a_seed_resumes_to_the_uninterrupted_output(
        draw, crash_inputs, uninterrupted, tmp_path):
    fault = _drawn(CRASH_SEED)[draw]
    print(f"ESTIMATOR_VGG_CRASH_SEED={CRASH_SEED}: killed at {fault}")
    replay = f"(kill at {fault}; replay with ESTIMATOR_VGG_CRASH_SEED={CRASH_SEED})"
    out = tmp_path / "out"
    killed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2", fault=fault)
    assert killed.returncode == -signal.SIGKILL, (replay, killed.stderr[-2000:])
    resumed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2")
    assert resumed.returncode == 3, (replay, resumed.stderr[-3000:])
    _same_output(out, uninterrupted)


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_a_killed_npy_or_csv_job_resumes_to_the_uninterrupted_output(fmt, crash_inputs,
                                                                    uninterrupted, tmp_path):
    """The other formats' part files (npy: matrix and path index; csv: one wide file) are
    committed as safely: killed between a part's files and its listing, then resumed, the
    rows equal the uninterrupted run's bitwise (csv's %.9g round-trips float32)."""
    from estimator_vgg.output import read_features

    out = tmp_path / "out"
    args = ("output.rows_per_part=2", f"output.format={fmt}")
    killed = job(tmp_path, crash_inputs, out, *args, fault="part_files:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert job(tmp_path, crash_inputs, out, *args).returncode == 3
    paths, fc7 = read_features(out)
    ref_feats, ref_errors = uninterrupted
    assert paths == ref_feats["path"].tolist()
    np.testing.assert_array_equal(fc7, np.stack(ref_feats["fc7"]))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "errors"), ref_errors)
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_a_job_killed_from_outside_resumes_to_the_uninterrupted_output(crash_inputs,
                                                                       uninterrupted, tmp_path):
    out = tmp_path / "out"
    cfg = job_config(tmp_path, crash_inputs, out)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "estimator_vgg", str(cfg),
                             "output.rows_per_part=2"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill once two parts are committed
            m = out / "manifest.json"
            if m.exists() and len(json.loads(m.read_text()).get("parts", [])) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert len(json.loads((out / "manifest.json").read_text())["parts"]) < 5
    resumed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2")
    assert resumed.returncode == 3, resumed.stderr[-3000:]
    _same_output(out, uninterrupted)


def test_rerunning_a_finished_job_is_a_fast_no_op(crash_inputs, tmp_path):
    out = tmp_path / "out"
    assert job(tmp_path, crash_inputs, out).returncode == 3
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "features").iterdir())
    r = job(tmp_path, crash_inputs, out)
    assert r.returncode == 3  # still says that some files failed
    assert "nothing to do: all 9 files are already done (7 features, 2 errors)" in r.stdout
    assert "towers:" not in r.stderr  # no Estimator was built
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (out / "features").iterdir()) == before


def test_readers_ignore_parts_a_killed_run_left_uncommitted(crash_inputs, tmp_path):
    from estimator_vgg import read_features

    out = tmp_path / "out"
    killed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2", fault="part_files:2")
    assert killed.returncode == -signal.SIGKILL
    assert (out / "features" / "part-00001.parquet").exists()  # renamed, not yet listed
    paths, _ = read_features(out)
    assert len(paths) == len(pd.read_parquet(out / "features" / "part-00000.parquet"))


def test_a_listed_part_missing_on_disk_says_the_output_is_damaged_and_what_to_do(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        shutil.copy(DEMO / "coffee_small.jpg", imgs / name)
    out = tmp_path / "out"
    assert job(tmp_path, imgs, out, "output.rows_per_part=2").returncode == 0
    (out / "features" / "part-00000.parquet").unlink()
    shutil.copy(DEMO / "chelsea_cat.JPG", imgs / "d.jpg")
    r = job(tmp_path, imgs, out, "output.rows_per_part=2")
    assert r.returncode == 1
    assert "is damaged" in r.stderr and "part-00000" in r.stderr
    assert "features/part-00000.parquet is missing" in r.stderr
    assert "--overwrite" in r.stderr and "rerun the same command" not in r.stderr
    from estimator_vgg.manifest import OutputError
    from estimator_vgg.output import read_features
    with pytest.raises(OutputError, match="damaged: .*part-00000"):
        read_features(out)
    fixed = job(tmp_path, imgs, out, "output.rows_per_part=2", "--overwrite")
    assert fixed.returncode == 0 and len(read_features(out)[0]) == 4


def test_a_disk_that_fills_mid_part_stops_the_job_and_a_rerun_completes(crash_inputs,
                                                                        uninterrupted,
                                                                        tmp_path):
    """output.dir on a small filesystem (a tmpfs, which root mounts; elsewhere the test
    skips saying why) that fills up during the third part: the job stops naming the file and
    what to do, nothing half-written is left or listed; with space freed, a rerun completes
    to the uninterrupted output."""
    out = tmp_path / "out"
    out.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(out)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        from conftest import MOUNT_SKIP
        pytest.skip(f"{MOUNT_SKIP} here: {mount.stderr.strip() or mount.returncode}")
    try:
        full = job(tmp_path, crash_inputs, out, "output.rows_per_part=2")
        assert full.returncode == 1, full.stderr[-3000:]
        assert "no space left on the device of" in full.stderr, full.stderr[-2000:]
        assert "rerun the same command to resume" in full.stderr
        assert not list(out.rglob("*.tmp"))          # nothing half-written left behind
        from estimator_vgg.output import read_features
        paths, _ = read_features(out)                 # what is listed reads whole
        n = len(paths)
        assert 0 < n < len(uninterrupted[0]), n
        assert paths == uninterrupted[0]["path"].tolist()[:n]
        grow = subprocess.run(["mount", "-o", "remount,size=20m", str(out)],
                              capture_output=True, text=True)
        assert grow.returncode == 0, grow.stderr
        resumed = job(tmp_path, crash_inputs, out, "output.rows_per_part=2")
        assert resumed.returncode == 3, resumed.stderr[-3000:]
        _same_output(out, uninterrupted)
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)
