"""Every entry accounted for, part by part: the parts of a run, and the Accountant that walks
their expected listing as predicted rows arrive, turns the gaps into error rows and commits
each part once all its entries are in.

    parts = cut_parts(todo, first_index=3, size=1024, where=where, preset=preset)
    accountant = Accountant(store, parts, blocked, why, budget)
    accountant.row("a/b.jpg", fc7)   # in listing order; a skipped entry failed
    accountant.finish()              # the stream ended: what did not come failed

Every entry of a part ends in exactly one of two tables: features (its fc7 row) or errors (why
it failed). Rows come back from the Estimator in listing order with their paths; an entry the
pipeline dropped is noticed as a gap in that order and asked why (probe.Prober). Light at
import.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.job import ErrorRow, JobError
from estimator_vgg.listing import display_path
from estimator_vgg.remote import redact
from estimator_vgg.sources import DUPLICATE, Where

log = logging.getLogger(__name__)

Reason = Tuple[str, str]   # (reason, message)


@dataclass
class Part:
    """One output part being filled: its listed entries, and the rows accounted for so far."""
    index: int
    entries: List[str]                     # the output path of every entry, in order
    where: Optional[List[Optional[Where]]] = None  # where each entry's bytes are (default:
    # the file under input.dir); None for an entry whose row is preset
    preset: Dict[int, Reason] = field(default_factory=dict)  # position: its error row
    pos: int = 0                           # entries accounted for so far
    feature_paths: List[str] = field(default_factory=list)   # the feature rows so far
    feature_rows: List[np.ndarray] = field(default_factory=list)
    error_rows: List[ErrorRow] = field(default_factory=list)

    def fed(self, blocked: Dict[str, tuple]) -> List[int]:
        """Positions of the entries to read (not preset, not blocked)."""
        return [k for k, e in enumerate(self.entries) if k not in self.preset and e not in blocked]

    def where_of(self, k: int) -> Optional[Where]:
        return self.where[k] if self.where is not None else None

    @property
    def full(self) -> bool:
        return self.pos == len(self.entries)


def cut_parts(todo: Sequence[str], first_index: int, size: int,
              where: Optional[Sequence[Optional[Where]]] = None,
              preset: Optional[Dict[int, Reason]] = None) -> List[Part]:
    """The entries to do, cut into parts of `size` numbered from `first_index`; where and
    preset (by index into `todo`) are cut with them."""
    preset = preset or {}
    return [Part(first_index + k, list(todo[i:i + size]),
                 list(where[i:i + size]) if where is not None else None,
                 {n - i: preset[n] for n in range(i, min(i + size, len(todo))) if n in preset})
            for k, i in enumerate(range(0, len(todo), size))]


class Accountant:
    """Walks the expected listing as rows arrive; gaps become error rows; full parts commit."""

    def __init__(self, store, parts: List[Part], blocked: Dict[str, Reason],
                 why: Callable[[str, Optional[Where]], Reason], budget=None,
                 read_errors: Optional[Dict[str, Reason]] = None):
        """store: anything with commit(index, paths, fc7, errors) (a Store, or a Ray shard's
        part writer); blocked: files never opened, with their error row; why(path, where):
        the error row of an entry the pipeline dropped (probe.Prober); budget: the
        ErrorBudget, checked after each committed part (None: the caller checks it);
        read_errors: what the Python stage (reader.py) could not read, by path."""
        self.store, self.parts, self.blocked, self.why = store, parts, blocked, why
        self.budget = budget
        self.read_errors = read_errors if read_errors is not None else {}
        self.current = 0
        self.features = 0
        self.errors: List[ErrorRow] = []

    @property
    def accounted(self) -> int:
        return self.features + len(self.errors)

    def _fail(self, part: Part, rel: str) -> None:
        if part.pos in part.preset:
            reason, message = part.preset[part.pos]
        elif rel in self.blocked:
            reason, message = self.blocked[rel]
        elif rel in self.read_errors:
            reason, message = self.read_errors.pop(rel)
        else:
            reason, message = self.why(rel, part.where_of(part.pos))
        log.log(logging.INFO if reason == DUPLICATE else logging.WARNING, "%s: %s (%s)",
                redact(display_path(rel)), reason, message)
        part.error_rows.append((rel, reason, message))
        self.errors.append((rel, reason, message))

    def _commit_full_parts(self) -> None:
        while self.current < len(self.parts) and self.parts[self.current].full:
            part = self.parts[self.current]
            fc7 = np.concatenate(part.feature_rows) if part.feature_rows else None
            self.store.commit(part.index, part.feature_paths, fc7, part.error_rows)
            part.feature_rows, part.feature_paths = [], []  # free the rows
            self.current += 1
            if self.budget is not None:
                self.budget.add(len(part.entries), part.error_rows)
                self.budget.check()

    def _gap_before(self, rel: str) -> int:
        """How many expected entries precede `rel` (they were dropped by the pipeline)."""
        gap = 0
        for part in self.parts[self.current:]:
            for e in part.entries[part.pos if part is self.parts[self.current] else 0:]:
                if e == rel:
                    return gap
                gap += 1
        raise JobError(f"internal error: a row for {redact(rel)!r} arrived that the listing "
                       f"does not expect at this point; the parts written so far are whole, "
                       f"rerun to resume")

    def row(self, rel: str, fc7: np.ndarray) -> None:
        self._commit_full_parts()
        part = self.parts[self.current]
        if part.entries[part.pos] != rel:
            for _ in range(self._gap_before(rel)):
                self._fail(part, part.entries[part.pos])
                part.pos += 1
                self._commit_full_parts()
                part = self.parts[self.current]
        part.feature_paths.append(rel)
        part.feature_rows.append(fc7[None, :])
        part.pos += 1
        self.features += 1

    def commit_ready(self) -> None:
        """Commit every part whose rows are all in (row() does it at the next row)."""
        self._commit_full_parts()

    def finish(self) -> None:
        """The stream ended: every entry not yet accounted for failed."""
        self._commit_full_parts()
        for part in self.parts[self.current:]:
            while part.pos < len(part.entries):
                self._fail(part, part.entries[part.pos])
                part.pos += 1
            self._commit_full_parts()
