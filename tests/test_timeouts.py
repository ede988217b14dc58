"""Nothing hangs CI: every test runs under pytest-timeout, and the tests' subprocesses have
timeouts of their own."""
import subprocess

import pytest

from conftest import run_py


def test_every_test_runs_under_a_timeout(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    assert 0 < float(pytestconfig.getini("timeout")) <= 600


def test_a_hung_subprocess_fails_its_test_instead_of_blocking(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_py("-c", "import time; time.sleep(60)", timeout=1)
