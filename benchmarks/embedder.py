"""One image per call: a warm estimator_vgg.Embedder against Estimator.predict() per call.

    .venv/bin/python benchmarks/embedder.py [--reps 20] [--image chelsea_cat.JPG] [override ...]

Both sides run in this process, alternated call by call (the machine may be shared: compare
the ratio measured in one run), on configs/demo.yaml with the overrides given (default
devices.cpus=1: one tower, as the README's notebook snippet): the Embedder is opened once
(its open time is printed, not counted), then each rep times `emb.embed([image])` and
`list(est.predict(input_fn(cfg, [image]), ...))` with the same Estimator configuration and
checkpoint. Both compute a batch of one, so their rows must be equal to the bit; the script
checks it. Prints the CPU (lscpu's model, family/model and flags), the load average, the
wall times and the process's CPU time per call, and the ratios: of the medians, of the
fastest calls, of the CPU times (which other processes on the cores disturb least).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu  # noqa: E402 - benchmarks/ is on sys.path as the script's folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="calls timed on each side")
    ap.add_argument("--image", default="chelsea_cat.JPG", help="relative to input.dir")
    ap.add_argument("overrides", nargs="*", default=["devices.cpus=1"])
    args = ap.parse_args()

    import numpy as np

    from estimator_vgg import Embedder, build_estimator, input_fn, load_config
    from estimator_vgg import weights

    cfg = load_config(ROOT / "configs" / "demo.yaml", args.overrides)
    prepared = weights.prepare(cfg.model)
    print(f"CPU: {cpu()}; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"config: configs/demo.yaml {' '.join(args.overrides)}; {cfg.towers} towers, batch "
          f"{cfg.devices.batch_size}, {cfg.model.precision}; image {args.image}")
    t = time.perf_counter()
    emb = Embedder(cfg, prepared)
    print(f"Embedder open: {time.perf_counter() - t:.2f} s (graph, session, restore; once)")
    est = build_estimator(cfg, prepared)

    def warm():
        return emb.embed([args.image], progress=False)[0]

    def cold():
        batches = list(est.predict(input_fn(cfg, [args.image]), yield_single_examples=False,
                                   checkpoint_path=prepared.checkpoint))
        return batches[0]["fc7"][0]

    first = warm(), cold()   # neither side's first call is timed
    assert np.array_equal(*first), "a batch of one differs between the two sides"
    times = {"embed": [], "predict": []}
    cpu_s = {"embed": [], "predict": []}   # the process's CPU time, all threads
    with emb:
        for _ in range(args.reps):
            for name, fn in (("embed", warm), ("predict", cold)):
                t, c = time.perf_counter(), time.process_time()
                row = fn()
                times[name].append(time.perf_counter() - t)
                cpu_s[name].append(time.process_time() - c)
                assert np.array_equal(row, first[0]), f"{name}: the row changed"
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:8s} median {med[name] * 1000:7.1f} ms  min {min(v) * 1000:7.1f} ms  "
              f"max {max(v) * 1000:7.1f} ms  CPU median "
              f"{statistics.median(cpu_s[name]) * 1000:7.1f} ms  ({len(v)} calls)")
    least = {k: min(v) for k, v in times.items()}
    spent = {k: statistics.median(v) for k, v in cpu_s.items()}
    print(f"warm Embedder vs predict() per call: {med['predict'] / med['embed']:.1f}x faster "
          f"by the medians, {least['predict'] / least['embed']:.1f}x by the fastest calls "
          f"(the least disturbed on a shared machine), {spent['predict'] / spent['embed']:.1f}x "
          f"less CPU time; rows equal to the bit; load average {os.getloadavg()[0]:.2f} at "
          f"the end")


if __name__ == "__main__":
    main()
