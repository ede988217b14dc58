"""input.max_error_fraction, in one place: which error rows count, when the job stops, and
what the exit code says.

    budget = ErrorBudget(0.05, "out/errors", seen_before=900, errors_before=3)
    budget.add(entries=1024, errors=part_errors)   # after each committed part, in order
    budget.check()                                 # JobError above the fraction
    budget.check(final=True)                       # at the end, whatever the count
    budget.exit_code(error_rows)                   # 0, 3 or 1 (the CLI's)

Counted are the error rows of the entries seen, over this run and the earlier runs of the
output, except `duplicate_entry` (a repeated list line: the entry itself was processed once).
Light at import.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, List, Sequence

from estimator_vgg.job import ErrorRow, JobError
from estimator_vgg.sources import DUPLICATE

MIN_FILES_FOR_EARLY_STOP = 100  # before the end, the job stops only once this many were seen


def counted(errors: Iterable[ErrorRow]) -> int:
    """Error rows that count toward input.max_error_fraction."""
    return sum(1 for _, reason, _ in errors if reason != DUPLICATE)


def reason_counts(errors: Iterable[ErrorRow]) -> dict:
    """{reason: count} of (path, reason, message) rows, sorted by reason."""
    return dict(sorted(Counter(reason for _, reason, _ in errors).items()))


class ErrorBudget:
    """The fraction of failed files a job tolerates, over every run of its output."""

    def __init__(self, limit: float, errors_dir: str = "", seen_before: int = 0,
                 errors_before: int = 0):
        """limit: input.max_error_fraction; errors_dir: where the errors table is (named in
        the message); seen_before, errors_before: entries and counted error rows that earlier
        runs committed."""
        self.limit, self.errors_dir = limit, errors_dir
        self.seen, self.errors = seen_before, errors_before
        self.run_errors: List[ErrorRow] = []

    @classmethod
    def of_output(cls, limit: float, errors_dir: str, features: int, errors: int,
                  duplicates: int) -> "ErrorBudget":
        """The budget of an output whose committed parts hold `features` feature rows and
        `errors` error rows, `duplicates` of them duplicate_entry."""
        return cls(limit, errors_dir, features + errors - duplicates, errors - duplicates)

    def add(self, entries: int, errors: Sequence[ErrorRow]) -> None:
        """A committed part of `entries` listed entries, `errors` of them error rows."""
        errors = list(errors)
        self.seen += entries - (len(errors) - counted(errors))
        self.errors += counted(errors)
        self.run_errors += errors

    @property
    def exceeded(self) -> bool:
        return bool(self.seen) and self.errors / self.seen > self.limit

    def check(self, final: bool = False) -> None:
        """JobError when more than the fraction failed (before the end, only once
        MIN_FILES_FOR_EARLY_STOP entries were seen)."""
        if self.exceeded and (final or self.seen >= MIN_FILES_FOR_EARLY_STOP):
            raise JobError(f"{self.errors} of {self.seen} files failed "
                           f"({self.errors / self.seen:.1%}), above input.max_error_fraction="
                           f"{self.limit}: {reason_counts(self.run_errors)} in this run. The "
                           f"parts done so far are kept; see {self.errors_dir}, fix the inputs "
                           f"or raise the limit, and rerun to resume")

    def exit_code(self, error_rows: int) -> int:
        """The command's exit code for an output holding `error_rows` error rows: 0 every file
        has its feature row; 3 done, some files in the errors table; 1 more than the fraction
        failed."""
        return 1 if self.exceeded else 3 if error_rows else 0
