"""One run of the job over an output, as both executors take it.

    job = Job(cfg, located, store, parts, blocked, progress, budget, start=time.time())
    done = EXECUTORS[cfg.run.executor](job)      # runner.py: parts.run_here or cluster.run

runner.py builds the Job (listing, output, parts still to do); an executor embeds its parts,
commits each one to `job.store` and returns what it did (Done). Light at import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

ErrorRow = Tuple[str, str, str]   # (path, reason, message): a row of the errors table


class JobError(RuntimeError):
    """The job cannot go on; the message names the file or setting and what to do."""


@dataclass
class Done:
    """What one run embedded: rows, error rows, time to the first batch, executor details."""
    features: int
    errors: List[ErrorRow]
    first_batch_s: float
    record: dict = field(default_factory=dict)  # extra fields for the manifest's run record


@dataclass
class Job:
    """Everything an executor needs for one run."""
    cfg: object                 # the config.Config
    located: object             # the weights identified (weights.Located); converted only
    #                             when an entry is read
    store: object               # the output: commit(index, paths, fc7, errors) (store.Store)
    parts: List[object]         # the accounting.Parts still to do, in index order
    blocked: Dict[str, Tuple[str, str]]  # local files never to open, with their error row
    progress: object            # start(total), update(done, errors, shards=""), close()
    budget: object              # the budget.ErrorBudget: input.max_error_fraction over this
    #                             run and the earlier ones
    start: float                # time.time() when the command started

    def prepare_weights(self):
        """The converted checkpoint (converted now on first use of these weights)."""
        from estimator_vgg import weights
        return weights.prepare(self.cfg.model, self.located)
