"""Devices: the towers' TensorFlow names, the session config that makes them exist, the check
that they do, Ray's renumbering of GPUs, and what this machine's hardware and TensorFlow build
offer (CUDA libraries, native bfloat16).

The one home of device knowledge. Light at import (TensorFlow is imported inside the functions
that build or ask TensorFlow), so --dry-run and the config checks use it without TensorFlow.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

HOST = "/device:CPU:0"  # where the batch is split and fc7 gathered (never a GPU)
# A distribution that tensorflow[and-cuda]==2.15.1 installs: present means the CUDA build.
_CUDA_MARKER = "nvidia-cudnn-cu12"


class DeviceError(RuntimeError):
    """The config names a device this machine does not have."""


def tower_devices(devices) -> List[str]:
    """One TensorFlow device name per tower, for a DevicesConfig.

    GPUs are named as the session sees them: `visible_device_list` renumbers the configured
    ids from 0, so `gpus: [2, 3]` gives towers on /device:GPU:0 and /device:GPU:1 of the
    session, which are physical GPUs 2 and 3.
    """
    if devices.gpus:
        return [f"/device:GPU:{i}" for i in range(len(devices.gpus))]
    return [f"/device:CPU:{i}" for i in range(devices.cpus or 1)]


def session_config(devices):
    """The tf.compat.v1.ConfigProto that makes the towers' devices exist.

    It replaces Estimator's defaults entirely, so soft placement is set here explicitly.
    """
    import tensorflow as tf

    if devices.gpus:
        gpu_options = tf.compat.v1.GPUOptions(
            visible_device_list=",".join(str(g) for g in devices.gpus), allow_growth=True)
        return tf.compat.v1.ConfigProto(allow_soft_placement=devices.soft_placement,
                                        device_count={"GPU": len(devices.gpus), "CPU": 1},
                                        gpu_options=gpu_options)
    return tf.compat.v1.ConfigProto(allow_soft_placement=devices.soft_placement,
                                    device_count={"CPU": devices.cpus or 1, "GPU": 0})


def tensorflow_build() -> str:
    """Which TensorFlow is installed, read from the package metadata (no import)."""
    from importlib import metadata

    try:
        version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return "TensorFlow is not installed"
    try:
        metadata.version(_CUDA_MARKER)
        return f"tensorflow {version} with its CUDA libraries (the gpu extra)"
    except metadata.PackageNotFoundError:
        return (f"tensorflow {version} without its CUDA libraries (CPU only; for GPUs install "
                f"the gpu extra: ESTIMATOR_VGG_GPU=1 ./run.sh ..., or pip install "
                f"'estimator-vgg[gpu]')")


def check_devices(devices) -> None:
    """Stop before any work if the config names a GPU that TensorFlow cannot see."""
    if not devices.gpus:
        cpus = devices.cpus or 1
        if cpus > (os.cpu_count() or 1):
            log.warning("devices.cpus=%d towers on %d cores: CPU towers share the cores, so "
                        "more towers than cores add memory, not speed", cpus, os.cpu_count())
        return
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    missing = [g for g in devices.gpus if g >= len(found)]
    if missing:
        have = (f"GPUs {list(range(len(found)))}" if found else
                "no GPU (check nvidia-smi and the NVIDIA driver)")
        raise DeviceError(f"devices.gpus names GPU {', '.join(map(str, missing))}, but "
                          f"TensorFlow sees {have}; installed: {tensorflow_build()}. Set "
                          f"devices.gpus to ids that exist, or use devices.cpus")


def renumbered_for_task(devices):
    """The DevicesConfig a Ray task runs with. Ray hands a task the GPUs it reserved by
    setting CUDA_VISIBLE_DEVICES, so inside the task they are GPUs 0..n-1 whatever ids
    devices.gpus names: only the number of GPUs carries over."""
    if not devices.gpus:
        return devices
    return dataclasses.replace(devices, gpus=tuple(range(len(devices.gpus))))


def native_bfloat16(cpuinfo: Optional[str] = None) -> Optional[str]:
    """The CPU's native bfloat16 instructions ("AMX-BF16" or "AVX-512 BF16"), None without.

    Read from /proc/cpuinfo's flags (Linux; None elsewhere). Without them TensorFlow emulates
    bfloat16 and it runs slower than float32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return None


# What bfloat16 gave on CPUs with native bfloat16, for the hint below (docs/devices.md has
# the tables and the commands that measured them).
BFLOAT16_GAIN = {
    "AMX-BF16": "about 5-6x float32 at batch 16 (Sapphire Rapids: 48-57 against 9.7 images/s)",
    "AVX-512 BF16": "about 2x float32 for the bare model at batch 8 and 16 (AMD EPYC with "
                    "AVX-512 BF16, no AMX: 27 against 14 images/s)",
}
BFLOAT16_FIDELITY = "fc7 cosine similarity to float32 at least 0.99996 (demo images)"


def precision_hint(devices, precision: str, cpuinfo: Optional[str] = None) -> Optional[str]:
    """What to say once when a CPU job runs float32 on a CPU that has native bfloat16."""
    if devices.gpus or precision != "float32":
        return None
    native = native_bfloat16(cpuinfo)
    if native is None:
        return None
    return (f"this CPU has native bfloat16 ({native}): model.precision=bfloat16 ran "
            f"{BFLOAT16_GAIN[native]}, with {BFLOAT16_FIDELITY}; it changes the features "
            f"slightly, so it is recorded in the output's fingerprint (see docs/devices.md)")
