"""The README's notebook snippet runs as written, prints every demo image's fc7 with the golden
values, and a second predict() in the same process (as a notebook makes) gives them again."""
import json
import re

import numpy as np

from conftest import ROOT, rel_diff, run_py

GOLDEN = ROOT / "tests" / "golden"

# Run after the README's block, in its namespace: predict a second time and keep the rows.
SECOND_CALL = """
import numpy as _np
_rows = list(est.predict(input_fn(cfg, paths)))
_np.savez({out!r}, paths=[r["path"].decode() for r in _rows],
          fc7=_np.stack([r["fc7"] for r in _rows]))
"""


def test_readme_notebook_snippet_runs_and_gives_the_golden_vectors(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- notebook-snippet[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its notebook snippet marker"
    out = tmp_path / "second.npz"
    r = run_py("-c", block.group(1) + SECOND_CALL.format(out=str(out)), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    golden = np.load(GOLDEN / "demo_fc7.npz")
    tol = json.loads((GOLDEN / "manifest.json").read_text())["tolerance"]["per_row_relative_l2"]
    lines = r.stdout.splitlines()
    assert [ln.split(" (4096,) ")[0] for ln in lines] == golden["paths"].tolist(), r.stdout
    # the three values each line prints; per element, one tower against the goldens' two
    for line, want in zip(lines, golden["fc7"]):
        printed = np.array(line.split("[", 1)[1].rstrip("]").split(), np.float32)
        np.testing.assert_allclose(printed, want[:3], rtol=1e-3, atol=1e-4, err_msg=line)
    second = np.load(out)
    assert second["paths"].tolist() == golden["paths"].tolist()
    assert rel_diff(second["fc7"], golden["fc7"]).max() <= tol
