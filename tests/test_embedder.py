"""estimator_vgg.Embedder: one Estimator and one predict() kept open, fed call after call.

Its rows are the job's (the job run as a user runs it, on this machine), for every kind of
item; a failed item raises naming it and the errors table's reason, or comes back as a NaN
row with the reason; a generator streams; calls take turns; Ctrl-C leaves it usable; close()
leaves no thread and no session behind. The README's lines in a real kernel:
tests/test_notebook.py."""
import json
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

from conftest import DEMO, ROOT, run_py
from estimator_vgg.embedder import THREAD, EmbedderClosed, EmbedError
from estimator_vgg.input import IN_FLIGHT_PER_THREAD

BAD = ROOT / "tests" / "fixtures" / "bad"
DEMO_CFG = ROOT / "configs" / "demo.yaml"
TOLERANCE = json.loads((ROOT / "tests" / "golden" / "manifest.json").read_text())[
    "tolerance"]["per_row_relative_l2"]
# One tower, one image a step, one of everything in flight: the streaming bound is small.
SMALL = ["devices.cpus=1", "devices.batch_size=1", "input.read_concurrency=1",
         "input.decode_threads=1", "input.prefetch_batches=1"]


def config(overrides=()):
    from estimator_vgg import load_config
    return load_config(DEMO_CFG, list(overrides))


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job's output of the demo images (configs/demo.yaml: 2 towers of batch 2), one part."""
    from estimator_vgg import read_features

    out = tmp_path_factory.mktemp("job") / "out"
    r = run_py("-m", "estimator_vgg", DEMO_CFG, f"output.dir={out}", "output.rows_per_part=7",
               cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    paths, fc7 = read_features(out)
    assert len(paths) == 7
    return paths, fc7


@pytest.fixture(scope="module")
def emb():
    """An Embedder of configs/demo.yaml as it is: the job's batches of 2 x 2 towers."""
    from estimator_vgg import Embedder
    with Embedder(config()) as e:
        yield e


@pytest.fixture(scope="module")
def small():
    from estimator_vgg import Embedder
    with Embedder(config(SMALL)) as e:
        yield e


@pytest.fixture(scope="module")
def small_rows(small, job):
    """The demo images' rows at one image a step (each row is its image's alone)."""
    return small.embed(job[0], progress=False)


def tf_decoded(path):
    import tensorflow as tf
    return tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                              expand_animations=False).numpy()


def test_one_call_of_the_demo_paths_equals_the_jobs_output_to_the_bit(emb, job):
    paths, want = job
    got = emb.embed(paths)
    assert got.dtype == np.float32 and got.shape == (7, 4096)
    assert np.array_equal(got, want)
    again = emb.embed(paths, progress=False)   # warm: the same rows, call after call
    assert np.array_equal(again, want)


@pytest.mark.slow
def test_every_kind_of_item_gives_the_jobs_row(emb, job):
    """Absolute paths, pathlib paths, bytes of the file and arrays as TensorFlow's decoder
    returns them are the pixels the job decodes: its rows to the bit, whatever the mix."""
    paths, want = job
    kinds = [lambda p: str(DEMO / p), lambda p: (DEMO / p).read_bytes(),
             lambda p: tf_decoded(DEMO / p), lambda p: DEMO / p]
    for k in range(len(kinds)):
        items = [kinds[(k + n) % len(kinds)](p) for n, p in enumerate(paths)]
        assert np.array_equal(emb.embed(items, progress=False), want), k


def test_a_pil_image_is_embedded_as_its_pixels(emb, job):
    """Pillow gives TensorFlow's pixels for the lossless formats (PNG, GIF, BMP): the job's
    rows to the bit. A JPEG it decodes with libjpeg's accurate integer IDCT, where
    TensorFlow's decode_jpeg (and so the job) uses the fast one: other pixels, and the rows
    of exactly those pixels (decode_jpeg with dct_method INTEGER_ACCURATE), to the bit."""
    import tensorflow as tf
    from PIL import Image

    paths, want = job
    pil = emb.embed([Image.open(DEMO / p) for p in paths], progress=False)
    jpeg = [p.lower().endswith((".jpg", ".jpeg")) for p in paths]
    assert np.array_equal(pil[[not j for j in jpeg]], want[[not j for j in jpeg]])
    accurate = [tf.io.decode_jpeg(tf.io.read_file(str(DEMO / p)), channels=3,
                                  dct_method="INTEGER_ACCURATE").numpy() if j
                else tf_decoded(DEMO / p) for p, j in zip(paths, jpeg)]
    assert np.array_equal(emb.embed(accurate, progress=False), pil)
    assert not np.array_equal(pil[jpeg], want[jpeg])   # the IDCTs do differ on these
    modes = [Image.open(DEMO / p).convert(m) for p, m in zip(paths, ["L", "RGBA", "P"] * 3)]
    assert emb.embed(modes, progress=False).shape == (7, 4096)   # any mode, as RGB


def test_uris_are_read_as_the_job_reads_them(emb, job):
    pytest.importorskip("fsspec")
    from http_files import serve

    paths, want = job
    with serve({f"/img/{p}": (DEMO / p).read_bytes() for p in paths}) as srv:
        got = emb.embed([srv.url(f"/img/{p}") for p in paths], progress=False)
        assert np.array_equal(got, want)
        _, failed = emb.embed([srv.url("/img/nothing.jpg")], on_error="nan", progress=False)
    assert [f.reason for f in failed] == ["missing"], failed


def test_batched_otherwise_rows_are_within_the_goldens_tolerance(emb, job):
    """One image alone is a batch of 1 (padded to the two towers): other oneDNN kernels than
    the job's batch of 4, so not bitwise, but within the goldens' tolerance."""
    paths, want = job
    for p, ref in zip(paths[:3], want):
        got = emb.embed(p, progress=False)   # one item alone: one row
        assert got.shape == (1, 4096)
        assert rel_l2(got[0], ref) <= TOLERANCE, p


# what the job's errors table says for these (tests/test_reliability.py holds the job to it)
FAILING = [(BAD / "truncated.jpg", "decode_error"), (BAD / "empty.jpg", "empty_file"),
           (BAD / "not_an_image.jpg", "not_an_image"), (BAD / "huge_header.png", "too_large"),
           ("no/such/image.jpg", "missing"), (b"", "empty_file"),
           (np.zeros((4, 4), np.float64), "not_an_image"), (42, "not_an_image")]


def test_a_failed_item_raises_naming_it_and_the_errors_tables_reason(small, small_rows, job):
    paths = job[0]
    with pytest.raises(EmbedError) as e:
        small.embed([paths[0], BAD / "truncated.jpg", paths[1]], progress=False)
    f = e.value.failure
    assert (f.index, f.reason) == (1, "decode_error")
    assert str(BAD / "truncated.jpg") in str(e.value) and "decode_error" in str(e.value)
    assert "Invalid JPEG data" in f.message and 'on_error="nan"' in str(e.value)
    with pytest.raises(EmbedError, match=r"'no/such/image.jpg' under input.dir .*demo_images"
                                         r".*: missing"):
        small.embed(["no/such/image.jpg"], progress=False)
    # and the embedder goes on: the next call is whole
    assert np.array_equal(small.embed(paths, progress=False), small_rows)


def test_on_error_nan_gives_nan_rows_and_the_reasons_beside_them(small, small_rows, job):
    paths = job[0]
    items = [paths[0]]
    for item, _ in FAILING:
        items += [item, paths[len(items) % 7]]
    fc7, failed = small.embed(items, on_error="nan", progress=False)
    assert fc7.shape == (len(items), 4096)
    bad = [i for i in range(len(items)) if i % 2]
    assert [f.index for f in failed] == bad
    assert [f.reason for f in failed] == [r for _, r in FAILING]
    assert "40000x40000" in failed[3].message
    assert np.isnan(fc7[bad]).all()
    good = [i for i in range(len(items)) if not i % 2]
    assert np.array_equal(fc7[good], small_rows[[paths.index(items[i]) for i in good]])


@pytest.mark.slow
def test_a_generator_streams_pulled_as_the_work_goes(small, small_rows, job):
    """Items are pulled from a generator only a bounded number ahead of the rows: a long
    generator of paths is never held, let alone decoded, at once."""
    paths, n = job[0], 40
    pulled = []
    leads = []

    def items():
        for k in range(n):
            pulled.append(k)
            yield paths[k % 7]

    def progress(done, total):
        assert total is None     # a generator's length is not known
        leads.append(len(pulled) - done)

    fc7 = small.embed(items(), progress=progress)
    c = small.cfg
    b = small.batch
    bound = (b + 2 * c.input.read_concurrency + IN_FLIGHT_PER_THREAD * c.input.decode_threads
             + b * (c.input.prefetch_batches + 2) + 1)
    assert leads and max(leads) <= bound < n, (leads, bound)
    assert leads[0] < n
    assert np.array_equal(fc7, small_rows[[k % 7 for k in range(n)]])


def test_calls_from_two_threads_take_turns(small, small_rows, job):
    """One call at a time: a second thread's call waits until the running one returned."""
    paths = job[0]
    release, order, out = threading.Event(), [], {}

    def held_items():
        yield paths[0]
        assert release.wait(60)
        yield paths[1]

    def call(name, items):
        out[name] = small.embed(items, progress=False)
        order.append(name)

    a = threading.Thread(target=call, args=("a", held_items()))
    a.start()
    deadline = time.time() + 30
    while small._owner is None and time.time() < deadline:
        time.sleep(0.01)
    b = threading.Thread(target=call, args=("b", [paths[2]]))
    b.start()
    time.sleep(1.5)
    assert b.is_alive() and order == []       # b waits for a
    release.set()
    a.join(60)
    b.join(60)
    assert order == ["a", "b"]
    assert np.array_equal(out["a"], small_rows[:2])
    assert np.array_equal(out["b"], small_rows[2:3])


def test_a_call_from_inside_a_call_is_refused(small, small_rows, job):
    paths = job[0]

    def progress(done, total):
        small.embed([paths[0]])

    with pytest.raises(RuntimeError, match="from inside one of its own calls"):
        small.embed(paths, progress=progress)
    assert np.array_equal(small.embed(paths, progress=False), small_rows)


def test_ctrl_c_in_a_call_leaves_the_embedder_usable(small, small_rows, job):
    """KeyboardInterrupt from the items (a generator), from the progress callback, or a real
    SIGINT while the call waits: the call is given up, its rows still in the pipeline are
    dropped, the next call is whole."""
    paths = job[0]

    def items():
        for k in range(30):
            if k == 5:
                raise KeyboardInterrupt
            yield paths[k % 7]

    with pytest.raises(KeyboardInterrupt):
        small.embed(items(), progress=False)
    assert np.array_equal(small.embed(paths, progress=False), small_rows)

    def progress(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small.embed(paths * 4, progress=progress)
    assert np.array_equal(small.embed(paths[::-1], progress=False), small_rows[::-1])

    # a real SIGINT, sent to the main thread while the call waits for rows
    started = threading.Event()
    sender = threading.Thread(target=lambda: started.wait(60) and signal.pthread_kill(
        threading.main_thread().ident, signal.SIGINT))
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            small.embed(paths * 4, progress=lambda done, total: started.set())
    finally:
        started.set()
        sender.join(60)
    assert np.array_equal(small.embed(paths, progress=False), small_rows)


def _threads():
    return sorted(t.name for t in threading.enumerate()
                  if not isinstance(t, threading._DummyThread))


def _tasks(until=None, timeout=10.0):
    """The process's OS threads once their count holds still for 0.5 s (threads of the
    pipelines of earlier calls end a moment after them), or once it is `until` or fewer."""
    deadline, last, since = time.time() + timeout, -1, time.time()
    while time.time() < deadline:
        n = len(os.listdir("/proc/self/task"))
        if until is not None and n <= until:
            return n
        if n != last:
            last, since = n, time.time()
        elif until is None and time.time() - since >= 0.5:
            return n
        time.sleep(0.05)
    return last


def test_close_stops_its_thread_and_session_and_leaves_nothing_behind(small, small_rows, job):
    """Python threads are compared by name (TensorFlow's own threads that ran Python show as
    Dummy-N entries, which Python 3.11 keeps after they end): none is left that was not there
    before; the process's OS threads are counted in /proc: back to the count before the
    embedder opened, or fewer (threads of earlier tests in this worker, an HTTP server's
    handler, may end meanwhile)."""
    from estimator_vgg import Embedder

    before, tasks = _threads(), _tasks()
    with Embedder(small.cfg) as e:
        assert _threads().count(THREAD) == before.count(THREAD) + 1
        assert np.array_equal(e.embed(job[0][:1], progress=False), small_rows[:1])
        session = e._session
        assert _tasks() > tasks
    assert e.closed and session._closed
    assert not Counter(_threads()) - Counter(before)
    assert _tasks(until=tasks) <= tasks
    with pytest.raises(EmbedderClosed, match="closed: open a new one"):
        e.embed(job[0][:1])
    e.close()   # again: nothing to do
