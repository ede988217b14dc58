"""The command line: `estimator-vgg CONFIG.yaml [section.key=value ...]` (run.sh calls it)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

USAGE_EPILOG = """\
examples:
  estimator-vgg configs/demo.yaml
  estimator-vgg configs/prod.yaml devices.gpus=[0,1] devices.batch_size=32
  estimator-vgg configs/prod.yaml output.dir=/data/fc7 output.format=npy

most used keys (all of them: README, "Config reference"):
  input.dir            folder of images, scanned recursively
  output.dir           where features/ and manifest.json are written
  output.format        parquet (default), npy or csv
  model.weights        imagenet, a Keras .h5, a tensorflow-vgg .npy, or synthetic
  devices.gpus         GPU ids, one tower each, e.g. [0,1,2,3]
  devices.cpus         number of CPU towers when there is no GPU
  devices.batch_size   images per tower per step
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if not verbose:
        # TensorFlow's C++ start-up lines (CUDA plugin registration and the like); errors still
        # reach the user as Python exceptions. Must be set before TensorFlow is imported.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="estimator-vgg", description="Extract VGG16 fc7 features (4096 floats per image) "
        "for every image under input.dir, over every configured device.",
        epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the job's YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override a config value (read as YAML); beats the file")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete features, errors and manifest already in output.dir and "
                             "start afresh (same as output.overwrite=true)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines and full tracebacks")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    log = logging.getLogger("estimator_vgg")

    from estimator_vgg.config import ConfigError, load_config
    try:
        overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"estimator-vgg: config error: {e}", file=sys.stderr)
        return 2

    import tensorflow as tf
    if not args.verbose:
        tf.get_logger().setLevel(logging.ERROR)

    from estimator_vgg.estimator import DeviceError
    from estimator_vgg.runner import JobError, run
    from estimator_vgg.store import OutputError
    from estimator_vgg.weights import WeightsError
    try:
        summary = run(cfg)
    except (JobError, DeviceError, WeightsError, OutputError) as e:
        if args.verbose:
            log.exception("failed")
        print(f"estimator-vgg: error: {e}", file=sys.stderr)
        return 1
    print(summary_text(summary, cfg.output.format))
    if summary.error_count / summary.files > cfg.input.max_error_fraction:
        return 1
    return 3 if summary.error_count else 0


def summary_text(s, fmt: str) -> str:
    if s.noop:
        head = (f"estimator-vgg: nothing to do: all {s.files} files are already done "
                f"({s.features} features, {s.error_count} errors) in {s.output}")
    else:
        head = (f"estimator-vgg: {s.new_files} new files in {s.seconds:.1f} s "
                f"({s.images_per_s:.2f} images/s); output {s.output} ({fmt})")
    lines = [head, f"  files      {s.files}", f"  features   {s.features}",
             f"  errors     {s.error_count}"]
    lines += [f"    {reason:<22} {n}" for reason, n in s.errors.items()]
    if s.error_count:
        lines.append(f"  the errors table: pandas.read_parquet('{s.output / 'errors'}')")
    return "\n".join(lines)
