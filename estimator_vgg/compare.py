"""estimator-vgg compare: two outputs, or golden files, row by row (a light module).

    estimator-vgg compare A B [--max-rel-l2 1e-4] [--min-cosine 0.9999] [--subset] [--json]
    estimator-vgg compare OUTPUT --save-golden GOLDEN.npz

    from estimator_vgg.compare import compare, open_side
    c = compare(open_side("golden.npz"), open_side("out/run"))
    c.stats()["rel_l2"]["max"], c.judge(max_rel_l2=1e-4).agree

A is the reference (a golden, an earlier output); B is compared with it. Rows are matched by
`path` (the k-th row of a path with the k-th of the same path), so the order of the rows may
differ. Per matched row: the relative L2 distance |b - a| / |a| and the cosine similarity
(fc7 is zero wherever the ReLU cut it, so element-wise relative tolerances mean nothing). The
fingerprints (weights, preprocessing, precision) are reported side by side, never a reason to
refuse: comparing precisions or machines is the point.

The sides (an output, a golden file, arrays) and the golden file's format: golden.py.

A holds its whole matrix in memory; B is read one part at a time (iter_parts), so B may be an
output larger than memory, and A should be the smaller side (a golden).
Exit codes of the command: 0 agree, 1 differ, 2 usage error or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from estimator_vgg.golden import CompareError, Side, open_side, read_all, save_golden
from estimator_vgg.manifest import OFF_WHEN_ABSENT, Fingerprint, ManifestError, OutputError

AGREE, DIFFER, UNUSABLE = 0, 1, 2
LISTED = 100       # paths listed per category in --json (the counts are always complete)
_BLOCK = 2048      # rows compared at once (float64 copies of two blocks)


def _keys(paths: Sequence[str], seen: Counter) -> List[Tuple[str, int]]:
    """(path, k): the k-th row of that path, so repeated paths pair up in order."""
    out = []
    for p in paths:
        out.append((p, seen[p]))
        seen[p] += 1
    return out


def _row_metrics(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
    """(relative L2 |b-a|/|a|, cosine, bitwise equal, max |b-a|) per row, in float64.

    A zero row of A: relative L2 0 when B's is zero too, else inf. A zero row on either side:
    cosine 1 when both are zero, else 0. NaN anywhere gives NaN, which fails every threshold."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = b64 - a64
    na, nb, nd = (np.linalg.norm(x, axis=1) for x in (a64, b64, d))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(na > 0, nd / np.where(na > 0, na, 1), np.where(nd > 0, np.inf, 0.0))
        cos = np.einsum("ij,ij->i", a64, b64) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    one_zero = (na == 0) ^ (nb == 0)
    cos = np.where(both_zero, 1.0, np.where(one_zero, 0.0, cos))
    bad = np.isnan(a64).any(axis=1) | np.isnan(b64).any(axis=1)
    rel, cos = np.where(bad, np.nan, rel), np.where(bad, np.nan, np.clip(cos, -1.0, 1.0))
    equal = (a.view(np.uint32) == b.view(np.uint32)).all(axis=1)
    cos = np.where(equal & ~bad, 1.0, cos)   # not 1 - 1e-16 from rounding
    return rel, cos, equal, np.abs(d).max(axis=1, initial=0.0)


@dataclass
class Verdict:
    """Whether B agrees with A under the thresholds, and every reason it does not."""
    agree: bool
    reasons: List[str]
    max_rel_l2: Optional[float]
    min_cosine: Optional[float]
    beyond_rel_l2: int
    below_cosine: int
    subset: bool

    @property
    def exit_code(self) -> int:
        return AGREE if self.agree else DIFFER


@dataclass
class Comparison:
    """Rows of B against A: which matched, which are on one side only, and per-row distances."""
    a: Side
    b: Side
    paths: List[str]                 # matched rows, in B's order
    rel_l2: np.ndarray
    cosine: np.ndarray
    equal: np.ndarray                # bitwise equal rows
    max_abs: np.ndarray
    reordered: bool                  # matched rows are not in the same order on both sides
    only_a: List[str]                # feature rows of A whose path B has nowhere
    only_b: List[str]
    failed_in_a_only: List[Tuple[str, str]]   # (path, A's reason): B has its features
    failed_in_b_only: List[Tuple[str, str]]   # (path, B's reason): A has its features
    errors_only_a: List[Tuple[str, str]]      # error rows of A whose path B has nowhere
    errors_only_b: List[Tuple[str, str]]
    failed_in_both: int
    reasons_differ: List[Tuple[str, str, str]]   # (path, A's reason, B's reason)

    def stats(self) -> Dict[str, Any]:
        n = len(self.paths)

        def pct(x, q):
            if not n:
                return None
            return float("nan") if np.isnan(x).any() else float(np.percentile(x, q))

        rel, cos = self.rel_l2, self.cosine
        return {
            "matched": n, "bitwise_equal": int(self.equal.sum()),
            "nan_rows": int(np.isnan(rel).sum()),
            "rel_l2": {"max": pct(rel, 100), "p99": pct(rel, 99), "median": pct(rel, 50),
                       "mean": float(rel.mean()) if n else None},
            "cosine": {"min": pct(cos, 0), "p01": pct(cos, 1), "median": pct(cos, 50),
                       "mean": float(cos.mean()) if n else None},
            "max_abs_diff": float(self.max_abs.max()) if n else None,
        }

    def _worst(self, key: np.ndarray, n: int, highest: bool) -> List[Dict[str, Any]]:
        k = np.where(np.isnan(key), np.inf if highest else -np.inf, key)
        order = np.argsort(-k if highest else k, kind="stable")[:n]
        return [{"path": self.paths[i], "rel_l2": float(self.rel_l2[i]),
                 "cosine": float(self.cosine[i])} for i in order]

    def worst_by_rel_l2(self, n: int = 5) -> List[Dict[str, Any]]:
        return self._worst(self.rel_l2, n, highest=True)

    def worst_by_cosine(self, n: int = 5) -> List[Dict[str, Any]]:
        return self._worst(self.cosine, n, highest=False)

    def judge(self, max_rel_l2: Optional[float] = None, min_cosine: Optional[float] = None,
              subset: bool = False) -> Verdict:
        """B agrees with A when every row of A (and, unless subset, of B) is matched on the
        other side in the same state (features or error) and every matched row is within the
        thresholds given. NaN is never within."""
        reasons = []
        beyond = int((~(self.rel_l2 <= max_rel_l2)).sum()) if max_rel_l2 is not None else 0
        below = int((~(self.cosine >= min_cosine)).sum()) if min_cosine is not None else 0
        s = self.stats() if beyond or below else {}
        if beyond:
            reasons.append(f"{beyond} of {len(self.paths)} rows beyond --max-rel-l2 "
                           f"{max_rel_l2:g} (worst {_fmt(s['rel_l2']['max'])})")
        if below:
            reasons.append(f"{below} of {len(self.paths)} rows below --min-cosine "
                           f"{min_cosine:g} (worst {_fmt(s['cosine']['min'], cos=True)})")
        one_sided = [("rows only in A", len(self.only_a)),
                     ("error rows only in A", len(self.errors_only_a)),
                     ("rows that failed in B only", len(self.failed_in_b_only)),
                     ("rows that failed in A only", len(self.failed_in_a_only))]
        if not subset:   # a golden of some of B's rows: B's other rows are not a difference
            one_sided += [("rows only in B", len(self.only_b)),
                          ("error rows only in B", len(self.errors_only_b))]
        reasons += [f"{n} {what}" for what, n in one_sided if n]
        return Verdict(not reasons, reasons, max_rel_l2, min_cosine, beyond, below, subset)

    def to_dict(self, verdict: Verdict, worst: int = 5) -> Dict[str, Any]:
        def side(s: Side) -> Dict[str, Any]:
            return {"name": s.name, "kind": s.kind, "rows": s.rows, "error_rows": len(s.errors),
                    "output_format": s.output_format, "status": s.status,
                    "made_on": s.made_on, "versions": s.versions, "devices": s.devices,
                    "fingerprint": s.fingerprint.to_dict() if s.fingerprint else None}

        def listed(xs):
            return [list(x) if isinstance(x, tuple) else x for x in xs[:LISTED]]

        return {
            "a": side(self.a), "b": side(self.b),
            "how_made": [{"key": k, "a": va, "b": vb, "differs": va != vb}
                         for k, va, vb in fingerprint_table(self.a, self.b)],
            "rows": {"matched": len(self.paths), "reordered": self.reordered,
                     "only_a": len(self.only_a), "only_b": len(self.only_b),
                     "failed_in_a_only": len(self.failed_in_a_only),
                     "failed_in_b_only": len(self.failed_in_b_only),
                     "error_rows_only_a": len(self.errors_only_a),
                     "error_rows_only_b": len(self.errors_only_b),
                     "failed_in_both": self.failed_in_both,
                     "reasons_differ": len(self.reasons_differ),
                     "listed": {"only_a": listed(self.only_a), "only_b": listed(self.only_b),
                                "failed_in_a_only": listed(self.failed_in_a_only),
                                "failed_in_b_only": listed(self.failed_in_b_only),
                                "error_rows_only_a": listed(self.errors_only_a),
                                "error_rows_only_b": listed(self.errors_only_b),
                                "reasons_differ": listed(self.reasons_differ)}},
            "stats": _clean(self.stats()),
            "worst_by_rel_l2": _clean(self.worst_by_rel_l2(worst)),
            "worst_by_cosine": _clean(self.worst_by_cosine(worst)),
            "thresholds": {"max_rel_l2": verdict.max_rel_l2, "min_cosine": verdict.min_cosine,
                           "subset": verdict.subset},
            "beyond": {"max_rel_l2": verdict.beyond_rel_l2, "min_cosine": verdict.below_cosine},
            "agree": verdict.agree, "reasons": verdict.reasons, "exit_code": verdict.exit_code,
        }

    def report(self, verdict: Verdict, worst: int = 5) -> str:
        """The text the command prints."""
        lines = [f"A: {self.a.describe()}", f"B: {self.b.describe()}", ""]
        lines += _fingerprint_lines(self.a, self.b)
        s = self.stats()
        order = ", in another order" if self.reordered else ""
        lines += ["", f"rows: {s['matched']} matched by path{order}; only in A "
                      f"{len(self.only_a)}, only in B {len(self.only_b)}",
                  f"error rows: failed in A only {len(self.failed_in_a_only)}, in B only "
                  f"{len(self.failed_in_b_only)}, in both {self.failed_in_both}; error rows "
                  f"only in A {len(self.errors_only_a)}, only in B {len(self.errors_only_b)}"]
        for what, xs in (("only in A", self.only_a), ("only in B", self.only_b),
                         ("failed in A only", self.failed_in_a_only),
                         ("failed in B only", self.failed_in_b_only),
                         ("error row only in A", self.errors_only_a),
                         ("error row only in B", self.errors_only_b)):
            for x in xs[:worst]:
                lines.append(f"  {what}: " + (f"{x[0]} ({x[1]})" if isinstance(x, tuple) else x))
            if len(xs) > worst:
                lines.append(f"  ... {len(xs) - worst} more {what} (--json lists {LISTED})")
        for p, ra, rb in self.reasons_differ[:worst]:
            lines.append(f"  failed in both, for other reasons: {p} (A {ra}, B {rb})")
        if s["matched"]:
            r, c = s["rel_l2"], s["cosine"]
            lines += [
                f"relative L2 |b-a|/|a|: max {_fmt(r['max'])}  p99 {_fmt(r['p99'])}  "
                f"median {_fmt(r['median'])}  mean {_fmt(r['mean'])}",
                f"cosine:                min {_fmt(c['min'], cos=True)}  "
                f"p01 {_fmt(c['p01'], cos=True)}  median {_fmt(c['median'], cos=True)}",
                f"max |b-a| of an element: {_fmt(s['max_abs_diff'])}; bitwise equal rows: "
                f"{s['bitwise_equal']} of {s['matched']}"
                + (f"; rows with NaN: {s['nan_rows']}" if s["nan_rows"] else "")]
            for title, rows in ((f"worst {min(worst, s['matched'])} by relative L2:",
                                 self.worst_by_rel_l2(worst)),
                                (f"worst {min(worst, s['matched'])} by cosine:",
                                 self.worst_by_cosine(worst))):
                lines.append(title)
                lines += [f"  {_fmt(w['rel_l2']):>9}  {_fmt(w['cosine'], cos=True)}  {w['path']}"
                          for w in rows]
        lines.append("")
        if verdict.max_rel_l2 is None and verdict.min_cosine is None:
            lines.append("no --max-rel-l2 or --min-cosine given: the values are reported, not "
                         "judged")
        if verdict.agree:
            lines.append("AGREE" + (" (every row of A is in B)" if verdict.subset else ""))
        else:
            lines.append("DIFFER: " + "; ".join(verdict.reasons))
        return "\n".join(lines)


def _clean(d):
    """JSON-ready: NaN and infinite values (a NaN row, a zero row of A) become null."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    if isinstance(d, float) and not np.isfinite(d):
        return None
    return d


def _fmt(x, cos: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "nan"
    if np.isinf(x):
        return str(x)
    if cos:   # within 1e-6 of 1, the distance from 1 is what differs
        return f"1-{1 - x:.2g}" if 1 - 1e-6 < x < 1 else f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if x == 0 else f"{x:.3g}"


def _flat_fingerprint(fp: Optional[Fingerprint]) -> Dict[str, Any]:
    if fp is None:
        return {}
    out: Dict[str, Any] = {}
    for k, v in fp.to_dict().items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    for flag in OFF_WHEN_ABSENT:
        out[f"preprocessing.{flag}"] = getattr(fp.preprocessing, flag)
    return out


def fingerprint_table(a: Side, b: Side) -> List[Tuple[str, Any, Any]]:
    """(key, A's value, B's value) for the fingerprints' keys, then the versions and devices
    of the runs that made them (a golden records those of its output's last run)."""
    fa, fb = _flat_fingerprint(a.fingerprint), _flat_fingerprint(b.fingerprint)
    rows = [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))]
    va, vb = a.versions or {}, b.versions or {}
    rows += [(f"versions.{k}", va.get(k), vb.get(k)) for k in sorted(set(va) | set(vb))]
    if a.devices or b.devices:
        rows.append(("devices", ", ".join(a.devices) or None, ", ".join(b.devices) or None))
    return rows


# Shown side by side even when equal; every other key only when it differs.
ALWAYS_SHOWN = ("weights_sha256", "synthetic_weights", "precision", "preprocessing.resize",
                "versions.tensorflow", "versions.platform", "devices")


def _fingerprint_lines(a: Side, b: Side) -> List[str]:
    missing = [n for n, s in (("A", a), ("B", b)) if s.fingerprint is None]
    head = "how they were made (* differs, ? recorded on one side only; reported, not judged)"
    if missing:
        head += f"; no fingerprint recorded in {' and '.join(missing)}"
    table = fingerprint_table(a, b)
    if not table:
        return [head + ": nothing recorded"]

    def show(v):
        if v is None:
            return "-"
        s = json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)
        return s if len(s) <= 48 else s[:22] + "..." + s[-23:]

    def mark(va, vb):   # * both recorded and different, ? recorded on one side only
        return " " if va == vb else "?" if va is None or vb is None else "*"

    shown = [(k, va, vb) for k, va, vb in table if k in ALWAYS_SHOWN or mark(va, vb) == "*"]
    width = max(len(k) for k, _, _ in shown)
    w2 = max(len(show(va)) for _, va, _ in shown)
    lines = [head + ":"]
    for k, va, vb in shown:
        lines.append(f"{mark(va, vb)} {k:<{width}}  {show(va):<{w2}}  {show(vb)}")
    if len(shown) < len(table):
        lines.append(f"  ({len(table) - len(shown)} more keys, equal or recorded on one side "
                     f"only; --json lists every key)")
    return lines


def compare(a: Side, b: Side) -> Comparison:
    """Every row of B against A's row of the same path (A read whole, B part by part)."""
    a_paths, a_mat = read_all(a)
    a_width = a_mat.shape[1]
    a_index = {k: i for i, k in enumerate(_keys(a_paths, Counter()))}
    matched_a = np.zeros(len(a_paths), bool)
    b_seen: Counter = Counter()
    paths: List[str] = []
    rel, cos, equal, max_abs, a_rows = [], [], [], [], []
    unmatched_b: List[str] = []
    b_features: set = set()
    for ps, m in b.chunks():
        if m.shape[1] != a_width and len(m) and len(a_mat):
            raise CompareError(f"{b.name} has rows of {m.shape[1]} values, {a.name} of "
                               f"{a_width}: not the same features")
        keys = _keys(ps, b_seen)
        b_features.update(ps)
        hit_b, hit_a = [], []
        for j, k in enumerate(keys):
            i = a_index.get(k)
            if i is None:
                unmatched_b.append(k[0])
            else:
                hit_b.append(j)
                hit_a.append(i)
        for s in range(0, len(hit_b), _BLOCK):
            ib = np.asarray(hit_b[s:s + _BLOCK])
            ia = np.asarray(hit_a[s:s + _BLOCK])
            r, c, e, x = _row_metrics(a_mat[ia], m[ib])
            rel.append(r)
            cos.append(c)
            equal.append(e)
            max_abs.append(x)
            a_rows.append(ia)
            matched_a[ia] = True
            paths += [ps[j] for j in ib.tolist()]
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dt))
    a_order = cat(a_rows, np.int64)
    a_features = set(a_paths)
    # A path that has a feature row on a side is not an error of that side (a repeated
    # input.list entry is both: its first row embedded, the repeat a duplicate_entry error).
    a_err = {p: r for p, r in a.errors if p not in a_features}
    b_err = {p: r for p, r in b.errors if p not in b_features}
    only_a, failed_b = [], []
    for i in np.flatnonzero(~matched_a).tolist():
        p = a_paths[i]
        (failed_b.append((p, b_err[p])) if p in b_err else only_a.append(p))
    only_b, failed_a = [], []
    for p in unmatched_b:
        (failed_a.append((p, a_err[p])) if p in a_err else only_b.append(p))
    errors_only_a = [(p, r) for p, r in a_err.items() if p not in b_features and p not in b_err]
    errors_only_b = [(p, r) for p, r in b_err.items() if p not in a_features and p not in a_err]
    both = [p for p in a_err if p in b_err]
    differ = [(p, a_err[p], b_err[p]) for p in both if a_err[p] != b_err[p]]
    return Comparison(a=a, b=b, paths=paths, rel_l2=cat(rel, np.float64),
                      cosine=cat(cos, np.float64), equal=cat(equal, bool),
                      max_abs=cat(max_abs, np.float64),
                      reordered=bool((np.diff(a_order) < 0).any()), only_a=only_a,
                      only_b=only_b, failed_in_a_only=failed_a, failed_in_b_only=failed_b,
                      errors_only_a=errors_only_a, errors_only_b=errors_only_b,
                      failed_in_both=len(both), reasons_differ=differ)


EPILOG = """\
examples:
  estimator-vgg compare out/before out/after --max-rel-l2 1e-4
  estimator-vgg compare out/demo --save-golden tests/golden/mine.npz
  estimator-vgg compare tests/golden/mine.npz out/ci --max-rel-l2 1e-4 --min-cosine 0.99999
  estimator-vgg compare golden.npz out/big --subset --json > compare.json

A and B are output folders (any output.format) or golden .npz files, in any combination; A is
the reference (relative L2 is |b - a| / |a|). Rows are matched by path, so their order may
differ. The fingerprints (weights, preprocessing, precision) and the versions and devices of
the runs are shown side by side, never a reason to refuse. Without a threshold the values are
reported, not judged. --subset: B may hold rows A has not (A is a golden of some of B's rows).

exit codes: 0 agree: every row matched (same path, both embedded or both failed) and within
              the thresholds given; with --save-golden, written
            1 differ: a row beyond --max-rel-l2 or below --min-cosine, or a row present
              (or failed) on one side only
            2 usage error, or an input that cannot be read (not an output or golden file, a
              damaged output)
Choosing goldens and tolerances, measured deltas: docs/goldens.md.
"""


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="estimator-vgg compare", description="Compare the fc7 rows of two outputs (or "
        "golden files) matched by path: rows on one side only, the worst rows by relative L2 "
        "distance and by cosine, summary statistics, the two fingerprints side by side.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", help="the reference: an output.dir or a golden .npz")
    parser.add_argument("b", metavar="B", nargs="?",
                        help="compared with A: an output.dir or a golden .npz")
    parser.add_argument("--max-rel-l2", type=float, metavar="X",
                        help="fail when a row's |b - a| / |a| is above X (e.g. 1e-4)")
    parser.add_argument("--min-cosine", type=float, metavar="C",
                        help="fail when a row's cosine similarity is below C (e.g. 0.9999)")
    parser.add_argument("--subset", action="store_true",
                        help="rows only in B (and B's failures A lacks) are not a difference")
    parser.add_argument("--worst", type=int, default=5, metavar="N",
                        help="how many worst rows and one-sided rows to list (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--storage-options", metavar="JSON", type=json.loads,
                        help="for outputs on an object store (s3://, gs://): the fsspec "
                             "options they are read with, as JSON")
    parser.add_argument("--save-golden", metavar="GOLDEN.npz",
                        help="write A's rows, error rows and fingerprint to a golden file "
                             "instead of comparing")
    args = parser.parse_args(argv)
    if args.save_golden and args.b:
        parser.error("--save-golden takes one input: estimator-vgg compare OUTPUT "
                     "--save-golden GOLDEN.npz")
    if not args.save_golden and not args.b:
        parser.error("give A and B to compare, or A and --save-golden GOLDEN.npz")
    if args.worst < 0:
        parser.error("--worst must be 0 or more")
    try:
        a = open_side(args.a, args.storage_options)
        if args.save_golden:
            n = save_golden(a, args.save_golden)
            print(f"estimator-vgg compare: wrote {n} rows, {len(a.errors)} error rows and "
                  f"{'the' if a.fingerprint else 'no'} fingerprint of {args.a} to "
                  f"{args.save_golden}")
            return AGREE
        c = compare(a, open_side(args.b, args.storage_options))
    except (CompareError, ManifestError, OutputError, FileNotFoundError) as e:
        print(f"estimator-vgg compare: error: {e}", file=sys.stderr)
        return UNUSABLE
    verdict = c.judge(args.max_rel_l2, args.min_cosine, args.subset)
    if args.json:
        print(json.dumps(c.to_dict(verdict, args.worst), indent=2, allow_nan=False))
    else:
        print(c.report(verdict, args.worst))
    return verdict.exit_code
