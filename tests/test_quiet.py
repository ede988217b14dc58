"""A quiet library: a fresh process without any TF_* variable that imports estimator_vgg, builds
its Estimator and predicts shows the job's own warnings and none of TensorFlow's start-up and
deprecation chatter, unless the user asks (ESTIMATOR_VGG_VERBOSE=1, the CLI's -v); a value the
user set is never overridden, and TensorFlow's errors still raise. The same in a real Jupyter
kernel: tests/test_notebook.py."""
import re

from conftest import ROOT, run_py

# A line of TensorFlow's C++ log ("2026-12-06 17:11:47.703128: E external/...") and the lines
# the issue names; any of them in the output is chatter.
CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", re.M)
CHATTER = ("Unable to register cuDNN factory", "Could not find TensorRT",
           "is deprecated and will be removed", "Use tf.keras instead",
           "MLIR V1 optimization pass", "oneDNN custom operations", "INFO:tensorflow",
           "WARNING:tensorflow", "Calling model_fn")
SYNTHETIC = "The output is NOT ImageNet fc7"
DEPRECATED = "is deprecated and will be removed"


def chatter(text):
    """The chatter lines in `text` (empty when quiet)."""
    return [ln for ln in text.splitlines()
            if CPP_LINE.match(ln) or any(c in ln for c in CHATTER)]


def readme_snippet():
    readme = (ROOT / "README.md").read_text()
    return re.search(r"<!-- notebook-snippet[^>]*-->\s*```python\n(.*?)```", readme,
                     re.S).group(1)


def test_the_readme_snippet_without_tf_variables_prints_its_rows_and_the_jobs_warning_only():
    r = run_py("-c", readme_snippet(), cwd=ROOT, user_env=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 7, r.stdout
    assert SYNTHETIC in r.stderr
    assert chatter(r.stderr + r.stdout) == [], r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == \
        [ln for ln in r.stderr.splitlines() if SYNTHETIC in ln]


# Imports the Estimator's module as a user's code does, makes one of TensorFlow's deprecation
# warnings (RunConfig) and then one of its errors, uncaught.
TRIGGER = """
from estimator_vgg import build_estimator
import tensorflow as tf
tf.estimator.RunConfig()
print("TF_CPP_MIN_LOG_LEVEL", __import__("os").environ.get("TF_CPP_MIN_LOG_LEVEL"))
tf.io.read_file("/nonexistent/estimator-vgg/x.jpg")
"""


def _trigger(before="", **env):
    r = run_py("-c", before + TRIGGER, cwd=ROOT, user_env=True, env=env)
    # TensorFlow's error propagates unchanged (type and message), quiet or not
    assert r.returncode == 1
    last = r.stderr.rstrip().splitlines()[-1]
    assert last.startswith("tensorflow.python.framework.errors_impl.NotFoundError: "), last
    assert "/nonexistent/estimator-vgg/x.jpg; No such file or directory" in last
    return r


def test_quiet_by_default_and_tensorflows_errors_still_raise():
    r = _trigger()
    assert chatter(r.stderr) == [], r.stderr
    assert "TF_CPP_MIN_LOG_LEVEL 3" in r.stdout


def test_the_switch_shows_tensorflows_log():
    r = _trigger(ESTIMATOR_VGG_VERBOSE="1")
    assert CPP_LINE.search(r.stderr) and DEPRECATED in r.stderr, r.stderr
    assert "TF_CPP_MIN_LOG_LEVEL None" in r.stdout


def test_a_tf_cpp_min_log_level_the_user_set_is_kept():
    r = _trigger(TF_CPP_MIN_LOG_LEVEL="0")
    assert "TF_CPP_MIN_LOG_LEVEL 0" in r.stdout
    assert CPP_LINE.search(r.stderr), r.stderr
    assert DEPRECATED not in r.stderr      # the Python side stays quiet


def test_a_tensorflow_logger_level_the_user_set_is_kept():
    r = _trigger("import logging\nlogging.getLogger('tensorflow').setLevel(logging.WARNING)\n")
    assert DEPRECATED in r.stderr, r.stderr
    assert not CPP_LINE.search(r.stderr)   # the C++ side stays quiet


def test_tensorflow_imported_first_keeps_its_cpp_lines_and_loses_the_python_warnings():
    """What docs/notebooks.md says can no longer be hidden: TensorFlow read its C++ log level
    when it was imported."""
    r = _trigger("import tensorflow\n")
    assert CPP_LINE.search(r.stderr), r.stderr
    assert DEPRECATED not in r.stderr
    assert "TF_CPP_MIN_LOG_LEVEL None" in r.stdout   # not set: it would be too late


def test_an_interactive_session_does_not_get_the_estimators_info_lines():
    """In a notebook TensorFlow sets its logger to INFO when imported (sys.ps1 is set); the
    Estimator's INFO lines would go to stdout."""
    code = ("import sys\nsys.ps1 = '>>> '\n" + readme_snippet())
    r = run_py("-c", code, cwd=ROOT, user_env=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert chatter(r.stdout + r.stderr) == [], r.stdout
    assert len(r.stdout.splitlines()) == 7 and SYNTHETIC in r.stderr


def test_a_logger_level_set_after_importing_estimator_vgg_in_a_notebook_is_kept():
    """The user's INFO equals the default TensorFlow sets in an interactive session; it is
    still theirs, and TensorFlow's INFO lines show."""
    code = ("import sys, logging\nsys.ps1 = '>>> '\nimport estimator_vgg\n"
            "logging.getLogger('tensorflow').setLevel(logging.INFO)\n" + readme_snippet())
    r = run_py("-c", code, cwd=ROOT, user_env=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INFO:tensorflow:Calling model_fn." in r.stdout, r.stdout
    assert not CPP_LINE.search(r.stderr)


def test_the_cli_keeps_the_jobs_warnings_and_v_shows_tensorflows_lines(tmp_path):
    quiet = run_py("-m", "estimator_vgg", ROOT / "configs" / "demo.yaml", "devices.cpus=1",
                   f"output.dir={tmp_path / 'quiet'}", cwd=ROOT, user_env=True)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert re.search(r"WARNING model.weights is `synthetic`.*NOT ImageNet fc7", quiet.stderr)
    assert re.search(r"INFO found 7 entries", quiet.stderr)
    assert chatter(quiet.stderr) == [], quiet.stderr
    loud = run_py("-m", "estimator_vgg", ROOT / "configs" / "demo.yaml", "devices.cpus=1",
                  f"output.dir={tmp_path / 'loud'}", "-v", cwd=ROOT, user_env=True)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert CPP_LINE.search(loud.stderr) and DEPRECATED in loud.stderr, loud.stderr
    assert re.search(r"WARNING model.weights is `synthetic`", loud.stderr)
