"""The CPU a figure was measured on, as every benchmark prints it beside its figures: lscpu's
model name, family and model, the cores this process may use, and the vector flags that
decide the speed of the model (`benchmarks/x.py` scripts import it as `from machine import cpu`).
"""
import os
import subprocess

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu() -> str:
    """`Intel(R) Xeon(R) Processor (family 6 model 167), 2 cores, flags avx2 avx512f ...`"""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    field = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines()
                                               if ":" in ln)}
    flags = field.get("Flags", "").split()
    keep = [f for f in FLAGS if f in flags]
    return (f"{field.get('Model name', '?')} (family {field.get('CPU family', '?')} model "
            f"{field.get('Model', '?')}), {len(os.sched_getaffinity(0))} cores, flags "
            f"{' '.join(keep) or 'none of ' + ' '.join(FLAGS)}")
