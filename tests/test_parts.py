"""The runner's whole-batch accounting (whole_batches.WholeBatchRows) against the
image-by-image form, with the model replaced by a row that depends on its batch's whole
makeup: any change in which images share a batch, which rows arrive or which files fail shows
up."""
import hashlib
import logging
import random

import numpy as np

from estimator_vgg.accounting import Accountant, Part
from estimator_vgg.input_wait import InputWait
from estimator_vgg.whole_batches import REDONE_PARTS, WholeBatchRows


class Pipeline:
    """Fake input_fn and Estimator.predict: the batches each form of input_fn gives when the
    files in `failing` fail, and each batch's rows a hash of the batch's keys."""

    def __init__(self, batch: int, failing: set):
        self.batch, self.failing, self.default_runs = batch, failing, 0

    def input(self, paths, part_sizes, files=None, whole_batches=False):
        assert sum(part_sizes) == len(paths)
        return whole_batches, list(paths), list(part_sizes)

    def predict(self, spec, hooks=()):
        whole, paths, sizes = spec
        self.default_runs += not whole
        start = 0
        for size in sizes:
            part, start = paths[start:start + size], start + size
            if not whole:  # image by image: failed images dropped, batches refilled
                part = [k for k in part if k not in self.failing]
            for i in range(0, len(part), self.batch):
                keys = part[i:i + self.batch]
                if whole and self.failing & set(keys):
                    continue  # dropped whole
                digest = [hashlib.sha256(repr((keys, k)).encode()).digest() for k in keys]
                yield {"path": np.array([k.encode() for k in keys], dtype=object),
                       "fc7": np.stack([np.frombuffer(d, np.float32) for d in digest])}


class Store:
    def __init__(self):
        self.commits = []

    def commit(self, index, paths, fc7, errors):
        self.commits.append((index, list(paths), None if fc7 is None else fc7.tobytes(),
                             [e[0] for e in errors]))


class Stream:
    """What WholeBatchRows asks of stream.PartStream, over the fake pipeline."""

    def __init__(self, pipeline, accountant):
        self.input, self.predict = pipeline.input, pipeline.predict
        self.accountant, self.wait = accountant, InputWait()

    def first(self, batch):
        pass

    def on_batch(self, held=0):
        pass

    def hand_over(self, batches):
        for batch in batches:
            for k, row in zip(batch["path"], batch["fc7"]):
                self.accountant.row(k.decode(), row)


def _run(sizes, pipeline, whole):
    keys = [f"k{i:03d}" for i in range(sum(sizes))]
    bounds = np.cumsum([0, *sizes])
    parts = [Part(n, keys[a:b]) for n, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    store = Store()
    accountant = Accountant(store, parts, {}, lambda rel, where: ("decode_error", "failed"))
    if whole:
        WholeBatchRows(Stream(pipeline, accountant), keys, None, list(sizes),
                       [f"part-{n}" for n in range(len(sizes))]).run()
    else:
        Stream(pipeline, accountant).hand_over(pipeline.predict(pipeline.input(keys, sizes)))
    accountant.finish()
    return store.commits


def test_whole_batches_commit_what_image_by_image_commits_whatever_fails(caplog):
    caplog.set_level(logging.ERROR, logger="estimator_vgg")  # thousands of failed files
    rnd = random.Random(7)
    redone_somewhere = 0
    for _ in range(1500):
        sizes = [rnd.choice([0, 0, 1, 2, 3, 5, 8]) for _ in range(rnd.randint(1, 6))]
        if not sum(sizes):
            continue
        rate = rnd.choice([0.0, 0.05, 0.3, 1.0])
        failing = {f"k{i:03d}" for i in range(sum(sizes)) if rnd.random() < rate}
        batch = rnd.choice([1, 2, 3, 4])
        want = _run(sizes, Pipeline(batch, failing), False)
        fast = Pipeline(batch, failing)
        got = _run(sizes, fast, True)
        assert got == want, (sizes, batch, sorted(failing))
        # at most REDONE_PARTS parts again one by one, then one run for all the rest
        assert fast.default_runs <= REDONE_PARTS + 1, (sizes, batch, sorted(failing))
        redone_somewhere += fast.default_runs > 0
    assert redone_somewhere > 300  # the cases did exercise the redo
