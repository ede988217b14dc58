"""Devices: native bfloat16 detection, the hint a float32 job gives on such a CPU, which
TensorFlow build is installed (no GPU here: the GPU graphs are in test_towers.py)."""
from estimator_vgg.config import DevicesConfig
from estimator_vgg.devices import (native_bfloat16, precision_hint, renumbered_for_task,
                                   tensorflow_build, tower_devices)

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SPR = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert native_bfloat16(AVX2) is None
    assert native_bfloat16(ZEN4) == "AVX-512 BF16"
    assert native_bfloat16(SPR) == "AMX-BF16"


def test_a_float32_cpu_job_on_a_native_bfloat16_cpu_hears_what_bfloat16_would_give():
    cpu = DevicesConfig(cpus=1)
    hint = precision_hint(cpu, "float32", SPR)
    assert "AMX-BF16" in hint and "model.precision=bfloat16" in hint and "cosine" in hint
    assert "AVX-512 BF16" in precision_hint(cpu, "float32", ZEN4)
    assert precision_hint(cpu, "float32", AVX2) is None       # emulated: slower, say nothing
    assert precision_hint(cpu, "bfloat16", SPR) is None       # already chosen
    assert precision_hint(DevicesConfig(gpus=(0,)), "float32", SPR) is None  # GPUs decide


def test_the_job_logs_the_hint_once_when_the_cpu_has_native_bfloat16(tmp_path, monkeypatch,
                                                                      caplog):
    import logging

    from conftest import make_config
    from estimator_vgg import devices, runner

    import shutil

    from conftest import DEMO

    monkeypatch.setattr(devices, "native_bfloat16", lambda cpuinfo=None: "AMX-BF16")
    (tmp_path / "imgs").mkdir()
    shutil.copy(DEMO / "coffee_small.jpg", tmp_path / "imgs" / "a.jpg")
    cfg = make_config(tmp_path, devices={"cpus": 1, "batch_size": 4},
                      input={"dir": str(tmp_path / "imgs")})
    with caplog.at_level(logging.INFO, logger="estimator_vgg"):
        runner.run(cfg)
    hints = [r for r in caplog.records if "native bfloat16" in r.getMessage()]
    assert len(hints) == 1 and "AMX-BF16" in hints[0].getMessage()


def test_gpus_are_renumbered_from_zero_inside_a_ray_task():
    devices = renumbered_for_task(DevicesConfig(gpus=(2, 5)))
    assert devices.gpus == (0, 1) and tower_devices(devices) == ["/device:GPU:0",
                                                                 "/device:GPU:1"]
    cpu = DevicesConfig(cpus=2)
    assert renumbered_for_task(cpu) is cpu


def test_the_installed_tensorflow_build_is_named():
    from importlib import metadata

    text = tensorflow_build()
    assert text.startswith("tensorflow 2.15.1")
    try:
        metadata.version("nvidia-cudnn-cu12")
        assert "with its CUDA libraries" in text
    except metadata.PackageNotFoundError:
        assert "without its CUDA libraries" in text and "ESTIMATOR_VGG_GPU=1" in text
