"""Shared fixtures: the demo images, seeded weights in every file format, the eager reference."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_images"
SEED = 0

sys.path.insert(0, str(Path(__file__).parent))


SUBPROCESS_TIMEOUT = 180  # seconds; a hung child fails its test instead of blocking CI


def run_py(*args, **kw):
    """A Python subprocess in this interpreter, with TensorFlow's start-up noise muted, killed
    after `timeout` seconds (default SUBPROCESS_TIMEOUT). user_env=True: as from a user's
    shell instead, without any TF_* variable (what tests/test_quiet.py checks)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    if kw.pop("user_env", False):
        env = {k: v for k, v in env.items()
               if not k.startswith("TF_") and k != "ESTIMATOR_VGG_VERBOSE"}
    env.update(kw.pop("env", {}))
    kw.setdefault("timeout", SUBPROCESS_TIMEOUT)
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True,
                          text=True, **kw)


def run_cli_without(module: str, *args, **kw):
    """The command line (`estimator_vgg.cli.main(args)`) in a subprocess where `module`
    cannot be imported, as on a machine without that extra installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from estimator_vgg.cli import main; "
            f"sys.exit(main({[str(a) for a in args]!r}))")
    return run_py("-c", code, **kw)


NOBODY_SKIP = "cannot drop privileges"   # the system refuses setuid (run_as_nobody)
MOUNT_SKIP = "cannot mount a small tmpfs"  # the system refuses mount (the disk-full test)


@pytest.fixture
def shared_dir():
    """A folder another user can traverse and write (pytest's own tmp dirs are mode 0700),
    removed at the end: for jobs run as `nobody` (run_as_nobody)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="evgg-nobody-", dir="/tmp"))
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_as_nobody(home, *args, **kw):
    """The command line as `nobody` (tests/as_user.py); skips, naming the errno, where the
    system refuses to drop privileges."""
    r = run_py(ROOT / "tests" / "as_user.py", home, *args, **kw)
    if r.returncode == 77 and NOBODY_SKIP in r.stderr:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    return r


@pytest.fixture(scope="session")
def demo_paths():
    from estimator_vgg.listing import list_images
    return list_images(DEMO, ["jpg", "jpeg", "png", "gif", "bmp"])


@pytest.fixture(scope="session")
def seed_arrays():
    from estimator_vgg.weights import synthetic_arrays
    return synthetic_arrays(SEED, include_top=True)


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory, seed_arrays):
    """The seed-0 weights as {"keras215": .h5, "published": .h5, "npy": .npy}."""
    from weight_files import write_published_h5, write_tfvgg_npy

    d = tmp_path_factory.mktemp("weights")
    files = {"keras215": d / "keras215.h5", "published": d / "published.h5",
             "npy": d / "vgg16.npy"}
    r = run_py(ROOT / "tests" / "keras_side.py", "save-weights", SEED, files["keras215"])
    assert r.returncode == 0, r.stderr[-3000:]
    write_published_h5(seed_arrays, files["published"])
    write_tfvgg_npy(seed_arrays, files["npy"])
    return files


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory, demo_paths):
    """The demo images preprocessed (center_crop), as fed to both the Estimator and Keras."""
    import tensorflow as tf
    from estimator_vgg.preprocess import preprocess

    x = np.stack([preprocess(tf.io.read_file(str(DEMO / p)), "center_crop").numpy()
                  for p in demo_paths])
    f = tmp_path_factory.mktemp("inputs") / "demo.npy"
    np.save(f, x)
    return f


@pytest.fixture(scope="session")
def keras_fc7(tmp_path_factory, weight_files, demo_inputs):
    """fc7 of the demo images from eager Keras VGG16, loading each .h5 with Keras' own loader."""
    d = tmp_path_factory.mktemp("reference")
    names = ("keras215", "published")
    args = [a for n in names for a in (weight_files[n], d / f"{n}.npy")]
    r = run_py(ROOT / "tests" / "keras_side.py", "fc7", args[0], demo_inputs, *args[1:])
    assert r.returncode == 0, r.stderr[-3000:]
    return {n: np.load(d / f"{n}.npy") for n in names}


def make_config(tmp_path, **sections):
    """A validated Config for tests: demo images in, tmp_path/out out, a tmp weights cache."""
    from estimator_vgg.config import load_config

    base = {"input": {"dir": str(DEMO)}, "output": {"dir": str(tmp_path / "out")},
            "model": {"weights": "synthetic", "seed": SEED,
                      "cache_dir": str(tmp_path / "cache")}}
    for sec, body in sections.items():
        base.setdefault(sec, {}).update(body)
    return load_config(None, **base)


def job_config(tmp_path, images, out):
    """A YAML config for running the job as a user would: synthetic weights, 2 CPU towers of
    batch 1, every failure tolerated (the tests count them)."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"input:\n  dir: {images}\n  max_error_fraction: 1.0\noutput:\n  dir: {out}\n"
                   f"model:\n  weights: synthetic\n  cache_dir: {ROOT / '.cache'}\n"
                   f"devices:\n  cpus: 2\n  batch_size: 1\n")
    return cfg


def run_job(tmp_path, images, out, *overrides, fault=None, env=None):
    """The job as a user runs it (job_config), optionally SIGKILLed at a fault point."""
    cfg = job_config(tmp_path, images, out)
    extra = dict(env or {})
    if fault:
        extra["ESTIMATOR_VGG_FAULT"] = fault
    return run_py("-m", "estimator_vgg", cfg, *overrides, cwd=tmp_path, env=extra)


def tables(out):
    """The features and errors tables of an output, as pandas reads them."""
    import pandas as pd
    return pd.read_parquet(out / "features"), pd.read_parquet(out / "errors")


def make_tar(members):
    """The bytes of an uncompressed tar holding (name, data) members, in order."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def rel_diff(a, b):
    """Per-row relative L2 difference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


# The quick tier (./run.sh test --quick): per file, the tests in it, or "*" for all. It must
# fail on any one-line change to the model path that alters fc7 (the goldens, tied to eager
# Keras; the job's own Estimator traced on its devices) and on each guarantee a user relies on
# (crash and resume in every format, a damaged output, the downloads, the browser page in CI),
# and run in about 2 minutes on 2 cores (docs/development.md has the measured times).
QUICK = {
    "test_config.py": "*", "test_manifest.py": "*", "test_listing.py": "*",
    "test_ray_units.py": "*", "test_preprocess.py": "*", "test_towers.py": "*",
    "test_notebook.py": "*", "test_timeouts.py": "*", "test_sources.py": "*",
    "test_parts.py": "*",
    "test_devices.py": ["test_native_bfloat16_is_read_from_the_cpu_flags",
                        "test_a_float32_cpu_job_on_a_native_bfloat16_cpu_hears_what_bfloat16"
                        "_would_give", "test_gpus_are_renumbered_from_zero_inside_a_ray_task"],
    "test_golden.py": ["test_demo_features_match_golden_vectors",
                       "test_golden_vectors_are_what_eager_keras_computes_from_the_image_files",
                       "test_demo_run_says_its_weights_are_synthetic"],
    "test_weights.py": ["test_imagenet_is_downloaded_once_by_the_real_downloader_md5_checked",
                        "test_weights_from_a_url_are_cached_once_and_their_sha256_checked",
                        "test_a_download_with_the_wrong_sha256_is_refused_and_nothing_is_cached",
                        "test_the_dry_run_names_url_weights_without_fetching_them"],
    "test_crash.py": ["test_a_killed_job_resumes_to_the_uninterrupted_output[part_files:2]",
                      "test_a_killed_npy_or_csv_job_resumes_to_the_uninterrupted_output",
                      "test_a_listed_part_missing_on_disk_says_the_output_is_damaged_and_what"
                      "_to_do"],
    "test_neighbors.py": ["test_pages_render_their_thumbnails_in_a_real_browser"],
    "test_parquet_layout.py": "*",
    "test_embedder.py": ["test_one_call_of_the_demo_paths_equals_the_jobs_output_to_the_bit"],
    "test_quiet.py": ["test_quiet_by_default_and_tensorflows_errors_still_raise",
                      "test_the_cli_keeps_the_jobs_warnings_and_v_shows_tensorflows_lines"],
    "test_compare.py": [
        "test_the_same_rows_in_every_output_format_and_order_agree_bitwise",
        "test_a_row_beyond_max_rel_l2_exits_1_and_is_named_first_among_the_worst",
        "test_min_cosine_catches_a_row_whose_direction_moved",
        "test_rows_and_error_rows_on_one_side_only_are_named_and_fail",
        "test_the_fingerprints_are_shown_side_by_side_and_never_refused",
        "test_a_golden_file_holds_paths_fc7_errors_and_fingerprint_and_compares_on_either_side",
        "test_inputs_that_cannot_be_read_exit_2_naming_them", "test_nan_rows_fail_every_threshold",
        "test_assert_features_close_fails_naming_the_worst_rows_and_the_tolerance",
        "test_assert_features_close_takes_matrices_dataframes_and_golden_files"],
    "test_option_goldens.py": ["test_the_option_fixtures_are_the_files_the_goldens_were_made_from",
                               "test_each_preprocessing_option_set_in_the_config_gives_its_golden"
                               "_vectors"],
    "test_index.py": ["test_approximate_kinds_find_the_exact_neighbours_and_the_planted_duplicates"
                      "[ivf]",
                      "test_auto_picks_the_kind_from_rows_and_memory_and_says_why",
                      "test_the_duplicates_page_is_bounded_and_counts_what_it_left_out"],
}


# Under CI (CI=true: .ci/run sets it) a skip proves nothing, so every skip fails the run (an
# extra that is missing or does not import: faiss, Ray, moto, s3fs/gcsfs, Chromium), but the
# system refusing what a test needs of it (dropping privileges, mounting a small
# filesystem): those are listed at the end of .ci/run's output.
IN_CI = os.environ.get("CI") == "true"


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _ci_forbids(report) -> bool:
    return (IN_CI and report.skipped and not hasattr(report, "wasxfail")
            and not any(r in _skip_reason(report.longrepr) for r in (NOBODY_SKIP, MOUNT_SKIP)))


def _as_failure(report) -> None:
    report.longrepr = (f"skipped under CI=true, where a skip proves nothing: "
                       f"{_skip_reason(report.longrepr)} (install what it needs, or run "
                       f"without CI=true)")
    report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if _ci_forbids(report):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()   # a module skipped whole (pytest.importorskip)
    if _ci_forbids(report):
        _as_failure(report)


def pytest_collection_modifyitems(config, items):
    for item in items:
        chosen = QUICK.get(Path(item.fspath).name, ())
        if chosen == "*" or item.name in chosen or item.originalname in chosen:
            item.add_marker(pytest.mark.quick)
