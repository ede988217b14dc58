"""The README's notebook snippet runs as written and prints every demo image's fc7."""
import re

from conftest import ROOT, run_py


def test_readme_notebook_snippet_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- notebook-snippet[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its notebook snippet marker"
    r = run_py("-c", block.group(1), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 7 and lines[0].startswith("camera_gray.png (4096,)"), r.stdout
