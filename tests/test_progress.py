"""Progress: a tqdm bar on a terminal, log lines with counts, rate and ETA elsewhere."""
import logging
import os
import pty
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import DEMO, ROOT
from estimator_vgg.progress import BarProgress, LogProgress, for_stream


def test_log_lines_when_not_a_terminal(caplog, tmp_path):
    with open(tmp_path / "log", "w") as f:
        assert isinstance(for_stream(f), LogProgress)
    p = LogProgress(every_s=0)
    with caplog.at_level(logging.INFO, logger="estimator_vgg"):
        p.start(200)
        p.update(50, 2)
    assert "progress: 50/200 images (25.0%), 2 errors" in caplog.text
    assert "images/s, ETA 0:" in caplog.text


def test_a_bar_on_a_terminal_with_counts_rate_and_errors(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", imgs)
    (imgs / "bad.jpg").write_bytes(b"nope")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"input:\n  dir: {imgs}\n  max_error_fraction: 1\noutput:\n  dir: out\n"
                   f"model:\n  weights: synthetic\n  cache_dir: {ROOT / '.cache'}\n")
    master, slave = pty.openpty()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "estimator_vgg", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.time() + 120  # a job that never closes its terminal fails, not hangs
    try:
        while time.time() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        else:
            pytest.fail(f"the job still held its terminal after 120 s: {seen[-500:]!r}")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 3, text[-2000:]
    assert "fc7: 100%" in text and "2/2" in text and "img/s" in text and "errors=1" in text
    assert b"errors      1" in out


def test_bar_counts_up_to_the_total():
    p = BarProgress()
    p.start(10)
    p.update(4, 1)
    p.update(10, 1)
    assert p.bar.n == 10
    p.close()
