"""The per-part work both executors share, and the local executor.

    done = run_here(job)                       # the local executor: this process's devices
    done = embed_parts(cfg, prepare, store, parts, blocked)   # a Ray shard runs this too

read -> predict -> account -> commit: the entries of the parts stream through one Estimator
(stream.PartStream) and every row, or the reason its entry failed, goes to the Accountant
(accounting.py), which commits each part whole to `store` in order. The local executor hands
it the output's Store; a Ray shard (cluster.py) a writer of its own. Neither executor reaches
into the other.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

from estimator_vgg.accounting import Accountant, Part
from estimator_vgg.config import Config
from estimator_vgg.job import Done, Job
from estimator_vgg.probe import Prober


class _Shown:
    """Progress as the user sees it: entries accounted for, plus rows held back for their
    part (whole batches); it never goes back."""

    def __init__(self, accountant: Accountant, on_progress: Callable[[int, int], None]):
        self.accountant, self.on_progress, self.shown = accountant, on_progress, 0

    def __call__(self, held: int = 0) -> None:
        self.shown = max(self.shown, self.accountant.accounted + held)
        self.on_progress(self.shown, len(self.accountant.errors))


def embed_parts(cfg: Config, prepare: Callable[[], object], store, parts: List[Part],
                blocked: Dict[str, tuple], budget=None, start: float = 0.0,
                on_progress: Callable[[int, int], None] = lambda done, errors: None) -> Done:
    """Embed every entry of `parts` and commit each part to `store` in order.

    prepare: returns the weights.PreparedWeights; called only when some entry is to be read
    (a run whose entries are all blocked or preset converts nothing). blocked: files never to
    open, with their error row. budget: the ErrorBudget, checked after each part (None: the
    caller checks it, as the Ray driver does). on_progress(done, errors) after every batch
    and at the end.
    """
    from estimator_vgg.stream import PartStream  # TensorFlow: only when something is read

    start = start or time.time()
    feed = [p.fed(blocked) for p in parts]
    accountant = Accountant(store, parts, blocked, Prober(cfg.input, cfg.preprocess), budget)
    stream: Optional[PartStream] = None
    if any(feed):
        stream = PartStream(cfg, prepare(), accountant, _Shown(accountant, on_progress), start)
        stream.run(parts, feed)
    accountant.finish()  # what the stream did not deliver failed, or was never fed
    on_progress(accountant.accounted, len(accountant.errors))
    return Done(accountant.features, accountant.errors,
                stream.first_batch_s if stream else 0.0, stream.wait.record if stream else {})


def run_here(job: Job) -> Done:
    """The local executor: this process, this machine's devices, parts committed in order."""
    return embed_parts(job.cfg, job.prepare_weights, job.store, job.parts, job.blocked,
                       job.budget, job.start, job.progress.update)
