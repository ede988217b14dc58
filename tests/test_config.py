"""Config: defaults, overrides, relative paths, and errors that name the key or path."""
import re

import pytest

from conftest import DEMO, ROOT
from estimator_vgg.config import ConfigError, load_config, reference_markdown


def write(tmp_path, text, name="job.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def minimal(tmp_path, extra=""):
    return write(tmp_path, f"input:\n  dir: {DEMO}\noutput:\n  dir: out\n{extra}")


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    cfg = load_config(minimal(tmp_path))
    assert cfg.output.format == "parquet" and cfg.model.weights == "imagenet"
    assert cfg.devices.batch_size == 8 and cfg.towers == 1
    assert cfg.preprocess.resize == "center_crop" and cfg.devices.soft_placement is False


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = load_config(write(sub, "input:\n  dir: ../imgs\noutput:\n  dir: ../out\n"))
    assert cfg.input.dir == tmp_path / "imgs" and cfg.output.dir == tmp_path / "out"


def test_command_line_overrides_beat_the_file_and_are_read_as_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(minimal(tmp_path, "devices:\n  cpus: 1\n"),
                      ["devices.cpus=3", "output.format=csv", "output.dir=elsewhere"])
    assert cfg.devices.cpus == 3 and cfg.towers == 3 and cfg.output.format == "csv"
    assert cfg.output.dir == tmp_path / "elsewhere"
    cfg = load_config(minimal(tmp_path), ["output.dir=010", "devices.gpus=[0, 2]"])
    assert cfg.output.dir == tmp_path / "010"  # a path override is taken as typed
    assert cfg.devices.gpus == (0, 2) and cfg.towers == 2


def test_config_is_frozen(tmp_path):
    cfg = load_config(minimal(tmp_path))
    with pytest.raises(Exception):
        cfg.devices.batch_size = 3


@pytest.mark.parametrize("extra, overrides, expected", [
    ("devices:\n  batchsize: 4\n", [], "unknown key devices.batchsize"),
    ("device:\n  cpus: 2\n", [], "unknown section 'device'"),
    ("", ["devices.towers=2"], "unknown key devices.towers"),
    ("devices:\n  batch_size: four\n", [], "devices.batch_size: expected an integer"),
    ("devices:\n  cpus: 2.5\n", [], "devices.cpus: expected an integer"),
    ("devices:\n  soft_placement: 1\n", [], "devices.soft_placement: expected true or false"),
    ("devices:\n  gpus: [0, x]\n", [], "devices.gpus[1]: expected an integer"),
    ("devices:\n  gpus: [0]\n  cpus: 2\n", [], "devices.gpus and devices.cpus are both set"),
    ("devices:\n  batch_size: 0\n", [], "devices.batch_size: must be at least 1"),
    ("", ["output.format=hdf5"], "output.format: 'hdf5' is not a format"),
    ("devices:\n  cpus: 1\ndevices:\n  cpus: 2\n", [], "key 'devices' is given twice"),
    ("preprocess:\n  resize: crop\n", [], "preprocess.resize: 'crop' is not a policy"),
    ("", ["devices.cpus"], "is not of the form section.key=value"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, extra, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_config(minimal(tmp_path, extra), overrides)


def test_missing_input_folder_is_named(tmp_path):
    f = write(tmp_path, "input:\n  dir: nowhere\noutput:\n  dir: out\n")
    with pytest.raises(ConfigError, match=f"input.dir: folder {tmp_path / 'nowhere'} does not"):
        load_config(f)


def test_missing_weights_file_is_named(tmp_path):
    f = minimal(tmp_path, "model:\n  weights: w/vgg16.h5\n")
    with pytest.raises(ConfigError, match=f"model.weights: file {tmp_path / 'w/vgg16.h5'} "):
        load_config(f)


def test_npy_weights_need_the_pickle_opt_in(tmp_path):
    (tmp_path / "vgg16.npy").write_bytes(b"not read before the opt-in")
    f = minimal(tmp_path, "model:\n  weights: vgg16.npy\n")
    with pytest.raises(ConfigError, match="model.allow_pickle: true"):
        load_config(f)
    cfg = load_config(f, ["model.allow_pickle=true"])
    assert cfg.model.weights == str(tmp_path / "vgg16.npy")


def test_missing_config_file_and_required_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="input.dir is required"):
        load_config(write(tmp_path, "output:\n  dir: out\n"))
    with pytest.raises(ConfigError, match="output.dir is required"):
        load_config(write(tmp_path, f"input:\n  dir: {DEMO}\n"))


def test_yaml_is_loaded_safely(tmp_path):
    f = write(tmp_path, "input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_config_reference_in_the_docs_matches_the_code():
    from estimator_vgg.config import REFERENCE_DOC, reference_in_doc

    assert REFERENCE_DOC == ROOT / "docs" / "configuration.md"
    assert reference_in_doc(REFERENCE_DOC.read_text()) == reference_markdown(), (
        "docs/configuration.md's config reference is stale: run "
        "`.venv/bin/python -m estimator_vgg.config --write`")


def test_shipped_configs_load(tmp_path):
    assert load_config(ROOT / "configs" / "demo.yaml").model.weights == "synthetic"
    prod = load_config(ROOT / "configs" / "prod.yaml", [f"input.dir={DEMO}"])
    assert prod.model.weights == "imagenet" and prod.devices.gpus == (0, 1, 2, 3)
    assert prod.run.executor == "local"
    cluster = load_config(ROOT / "configs" / "cluster.yaml", [f"input.dir={DEMO}"])
    assert cluster.run.executor == "ray" and cluster.run.ray.address == "auto"
    assert cluster.run.ray.cpus_per_task == 8.0 and cluster.devices.gpus == (0, 1, 2, 3)


def test_nested_ray_keys_override_and_are_checked(tmp_path):
    cfg = load_config(None, input={"dir": str(DEMO)}, output={"dir": str(tmp_path)},
                      run={"ray": {"max_retries": 1}},
                      overrides=["run.executor=ray", "run.ray.address=10.0.0.1:6379"])
    assert (cfg.run.executor, cfg.run.ray.address, cfg.run.ray.max_retries) == \
        ("ray", "10.0.0.1:6379", 1)
    assert cfg.to_dict()["run"] == {"executor": "ray", "ray": {
        "address": "10.0.0.1:6379", "cpus_per_task": 1.0, "parts_per_shard": 1,
        "max_retries": 1}}
    base = {"input": {"dir": str(DEMO)}, "output": {"dir": str(tmp_path)}}
    for overrides, message in (
            (["run.executor=spark"], "run.executor: 'spark' is not an executor"),
            (["run.ray.adress=auto"], "unknown key run.ray.adress; keys of run.ray: address"),
            (["run.ray=auto"], "section 'run.ray' must be a mapping"),
            (["run.ray.max_retries=-1"], "run.ray.max_retries: must be 0 or more"),
            (["run.ray.parts_per_shard=0"], "run.ray.parts_per_shard: must be at least 1"),
            (["run.ray.cpus_per_task=two"], "run.ray.cpus_per_task: expected a number")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, overrides=overrides, **base)
    assert load_config(None, overrides=["run.ray.address="], **base).run.ray.address is None
