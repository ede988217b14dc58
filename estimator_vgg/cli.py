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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines and full tracebacks")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    log = logging.getLogger("estimator_vgg")

    from estimator_vgg.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"estimator-vgg: config error: {e}", file=sys.stderr)
        return 2

    import tensorflow as tf
    if not args.verbose:
        tf.get_logger().setLevel(logging.ERROR)

    from estimator_vgg.estimator import DeviceError
    from estimator_vgg.runner import JobError, run
    from estimator_vgg.weights import WeightsError
    try:
        summary = run(cfg)
    except (JobError, DeviceError, WeightsError) as e:
        if args.verbose:
            log.exception("failed")
        print(f"estimator-vgg: error: {e}", file=sys.stderr)
        return 1
    print(f"estimator-vgg: {summary.features} images -> {summary.output / 'features'} "
          f"({cfg.output.format}) in {summary.seconds:.1f} s, "
          f"{summary.images_per_s:.2f} images/s")
    return 0
