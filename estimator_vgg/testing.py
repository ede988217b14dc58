"""Assertions for users' test suites: two outputs, golden files or matrices agree (light).

    from estimator_vgg.testing import assert_features_close

    def test_features_did_not_move(tmp_path):
        ...run the job into tmp_path / "out"...
        assert_features_close(tmp_path / "out", "tests/golden/mine.npz", max_rel_l2=1e-4)

Either argument is an output folder, a golden .npz (`estimator-vgg compare OUTPUT
--save-golden FILE.npz`), a (paths, matrix) pair, a DataFrame with `path` and `fc7` columns (as
pandas reads an output), or a bare matrix (rows then matched by position). Rows are matched by
path, as `estimator-vgg compare` does, with `expected` as the reference (A); the failure names
the worst rows. docs/goldens.md says which tolerances hold across CPUs, GPUs and precisions.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from estimator_vgg.compare import Comparison, compare
from estimator_vgg.golden import Side, arrays_side, open_side

__all__ = ["assert_features_close", "as_side"]


def as_side(x: Any, name: str) -> Side:
    """Any of the accepted forms, as a side of a comparison."""
    if isinstance(x, Side):
        return x
    if isinstance(x, (str, os.PathLike)):
        return open_side(x)
    if hasattr(x, "columns") and "fc7" in getattr(x, "columns", ()):   # a pandas DataFrame
        import numpy as np
        m = np.stack(x["fc7"].to_numpy()) if len(x) else np.empty((0, 4096), np.float32)
        return arrays_side(name, x["path"].tolist() if "path" in x.columns else None, m)
    if isinstance(x, tuple) and len(x) == 2:
        return arrays_side(name, list(x[0]), x[1])
    return arrays_side(name, None, x)


def assert_features_close(actual: Any, expected: Any, *, max_rel_l2: Optional[float] = 1e-4,
                          min_cosine: Optional[float] = None, subset: bool = False,
                          worst: int = 5) -> Comparison:
    """Fail (AssertionError) unless every row of `actual` matches the row of the same path in
    `expected`: both embedded, |actual - expected| / |expected| <= max_rel_l2 and cosine >=
    min_cosine (each checked when not None), and no row on one side only (with subset=True,
    `actual` may hold rows `expected` has not). Returns the Comparison when they agree.

    The default max_rel_l2=1e-4 is the project's own golden tolerance for float32 runs (other
    CPUs and tower counts: about 1e-6; any real change of weights, preprocessing or layers:
    above 1e-2). bfloat16 against float32 needs far more (docs/goldens.md).
    """
    if max_rel_l2 is None and min_cosine is None:
        raise ValueError("give max_rel_l2 or min_cosine (or both): without a tolerance "
                         "nothing would be checked")
    c = compare(as_side(expected, "expected"), as_side(actual, "actual"))
    verdict = c.judge(max_rel_l2, min_cosine, subset)
    if not verdict.agree:
        report = c.report(verdict, worst).replace("A: ", "A (expected): ", 1) \
                                          .replace("B: ", "B (actual):   ", 1)
        raise AssertionError(f"fc7 differ: {'; '.join(verdict.reasons)}\n{report}")
    return c
