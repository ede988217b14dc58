"""The README's notebook snippet runs as written, prints every demo image's fc7 with the golden
values, and a second predict() in the same process (as a notebook makes) gives them again."""
import json
import re

import numpy as np

from conftest import ROOT, run_py
from estimator_vgg.testing import assert_features_close

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
    assert_features_close(out, GOLDEN / "demo_fc7.npz", max_rel_l2=tol)


# The README's Embedder lines, then a call with tqdm.auto's bar: without ipywidgets, text.
EMBEDDER_CELL = """{block}
print("embedder", fc7.shape, fc7.dtype)
with Embedder(cfg) as emb:
    shown = emb.embed(paths[:2], progress=True)
print("bar", bool((shown == fc7[:2]).all()))
"""


def readme_embedder_block():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(from estimator_vgg import Embedder\n.*?)```", readme, re.S)
    assert block, "README lost its Embedder lines"
    return block.group(1)


def test_readme_snippet_in_a_jupyter_kernel_shows_the_jobs_warning_and_no_tensorflow_chatter(
        tmp_path):
    """The snippet run in a real ipykernel (this interpreter, no TF_* variables) by nbclient,
    as a notebook runs it: TensorFlow's C++ lines (which ipykernel forwards from the process's
    stderr) and its Python INFO and deprecation lines (which TensorFlow sends to stdout in an
    interactive session) are absent; the synthetic-weights warning is there. Then the README's
    Embedder lines in the same kernel: as quiet, and its progress bar is tqdm.auto's (text
    here, where ipywidgets is not installed, without tqdm's warning about it)."""
    import os
    import sys

    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from test_quiet import SYNTHETIC, chatter, readme_snippet

    spec = tmp_path / "kernels" / "estimator-vgg-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "estimator-vgg test", "language": "python"}))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TF_") and k != "ESTIMATOR_VGG_VERBOSE"}
    env["PYTHONPATH"] = str(ROOT)
    km = KernelManager(kernel_name="estimator-vgg-test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os, sys; print(sys.executable, "
                                  "sorted(k for k in os.environ if k.startswith('TF_')))"),
        nbformat.v4.new_code_cell(readme_snippet()),
        nbformat.v4.new_code_cell(EMBEDDER_CELL.format(block=readme_embedder_block()))])
    client = NotebookClient(nb, km=km, timeout=240, startup_timeout=90, kernel_name=km.kernel_name)
    try:
        client.execute(env=env, cwd=str(ROOT))   # raises CellExecutionError on an error
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    first, snippet, embedder = ([o for o in cell.outputs] for cell in nb.cells)
    assert "".join(o.get("text", "") for o in first).strip() == f"{sys.executable} []"
    stdout = "".join(o["text"] for o in snippet if o.get("name") == "stdout")
    stderr = "".join(o["text"] for o in snippet if o.get("name") == "stderr")
    assert all(o.output_type == "stream" for o in snippet), snippet
    golden = np.load(GOLDEN / "demo_fc7.npz")
    assert [ln.split(" (4096,) ")[0] for ln in stdout.splitlines()] == \
        golden["paths"].tolist(), stdout
    assert SYNTHETIC in stderr, stderr
    assert chatter(stdout + stderr) == [], stdout + stderr
    assert all(o.output_type == "stream" for o in embedder), embedder
    stdout = "".join(o["text"] for o in embedder if o.get("name") == "stdout")
    stderr = "".join(o["text"] for o in embedder if o.get("name") == "stderr")
    assert stdout == "embedder (7, 4096) float32\nbar True\n", stdout
    assert "fc7: 100%" in stderr and "2/2" in stderr, stderr
    assert "ipywidgets" not in stderr and "Warning" not in stderr, stderr
    assert chatter(stdout + stderr) == [], stdout + stderr
