"""The command line as users meet it: exit codes and messages that name what is wrong."""
import re
import shutil

from conftest import DEMO, ROOT, run_py


def _job(tmp_path, *overrides):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"input:\n  dir: imgs\noutput:\n  dir: out\nmodel:\n  weights: synthetic\n"
                   f"  cache_dir: {ROOT / '.cache'}\ndevices:\n  cpus: 2\n  batch_size: 1\n")
    return run_py("-m", "estimator_vgg", cfg, *overrides, cwd=tmp_path)


def test_config_error_exits_2_naming_the_key(tmp_path):
    (tmp_path / "imgs").mkdir()
    r = _job(tmp_path, "devices.batch_size=big")
    assert r.returncode == 2
    assert "config error: devices.batch_size: expected an integer, got 'big'" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_undecodable_image_is_reported_and_the_exit_code_says_so(tmp_path):
    shutil.copytree(DEMO, tmp_path / "imgs")
    (tmp_path / "imgs" / "space" / "broken.jpg").write_bytes(b"this is not a jpeg")
    r = _job(tmp_path, "input.max_error_fraction=0.5")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "space/broken.jpg: not_an_image" in r.stderr
    assert "errors      1" in r.stdout and "not_an_image" in r.stdout
    assert f"pandas.read_parquet('{tmp_path / 'out' / 'errors'}')" in r.stdout
    assert "Traceback" not in r.stderr


def test_features_not_written_by_the_job_are_not_touched(tmp_path):
    (tmp_path / "imgs").mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", tmp_path / "imgs")
    (tmp_path / "out" / "features").mkdir(parents=True)
    (tmp_path / "out" / "features" / "mine.parquet").write_bytes(b"precious")
    r = _job(tmp_path)
    assert r.returncode == 1 and "has features/ or errors/ but no manifest.json" in r.stderr
    assert (tmp_path / "out" / "features" / "mine.parquet").read_bytes() == b"precious"


def test_a_missing_gpu_stops_the_job_before_any_work(tmp_path):
    (tmp_path / "imgs").mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", tmp_path / "imgs")
    r = _job(tmp_path, "devices.cpus=null", "devices.gpus=[0,7]")
    assert r.returncode == 1, r.stderr[-2000:]
    assert re.search(r"devices.gpus names GPU (0, )?7, but TensorFlow sees", r.stderr), r.stderr
    assert not (tmp_path / "out" / "features").exists()


def test_an_empty_input_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "readme.txt").write_text("no images here")
    r = _job(tmp_path)
    assert r.returncode == 1 and f"input.dir {tmp_path / 'imgs'} holds no file" in r.stderr
