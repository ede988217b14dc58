"""The job against an object store, as the store tests run it (tests/test_object_store_faults.py,
tests/test_gcs.py): the demo images, synthetic weights, one CPU tower of batch 1, parts of 2
rows (4 parts), every bad file tolerated; and what an output holds, read back by this package's
own readers.

    r = job(tmp_path, "s3://out/run", "output.retries=1", output_options=opts)
    paths, fc7_bytes, errors = rows("s3://out/run", opts)
"""
import yaml

from conftest import DEMO, ROOT, run_py


def job(tmp_path, out, *overrides, input_dir=DEMO, input_list=None, input_options=None,
        output_options=None, output=None, name="job.yaml", env=None):
    cfg = {"input": {"dir": str(input_dir), "max_error_fraction": 1.0},
           "output": {"dir": str(out), "rows_per_part": 2, **(output or {})},
           "model": {"weights": "synthetic", "cache_dir": str(ROOT / ".cache")},
           "devices": {"cpus": 1, "batch_size": 1}}
    if input_list is not None:
        cfg["input"]["list"] = str(input_list)
    if input_options is not None:
        cfg["input"]["storage_options"] = input_options
    if output_options is not None:
        cfg["output"]["storage_options"] = output_options
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return run_py("-m", "estimator_vgg", path, *overrides, cwd=tmp_path, env=env or {})


def local_rows(tmp):
    """The job into a local folder under `tmp`: its rows, what every store output must equal
    bit for bit."""
    r = job(tmp, tmp / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    return rows(tmp / "out")


def rows(out, storage_options=None):
    """(paths, fc7 bytes per row, errors as (path, reason)) of an output."""
    from types import SimpleNamespace

    from estimator_vgg.output import Output
    from estimator_vgg.storage import location

    where = (location(str(out), SimpleNamespace(storage_options=storage_options))
             if storage_options is not None else out)
    o = Output(where)
    paths, m = o.read_features()
    errors = [e for p in o.parts
              for e in zip(*o.error_rows(p.index, ("path", "reason")).values())]
    return paths, [r.tobytes() for r in m], errors


def committed(out, storage_options) -> set:
    """The keys (relative to the output) of every object a commit names."""
    from types import SimpleNamespace

    from estimator_vgg.output import Output
    from estimator_vgg.storage import location

    o = Output(location(str(out), SimpleNamespace(storage_options=storage_options)))
    return {r["key"] for p in o.parts for r in p.objects["features"] + [p.objects["errors"]]}
