"""The command line (run.sh and the `estimator-vgg` console script call it).

    estimator-vgg CONFIG.yaml [section.key=value ...] [--dry-run] [--overwrite] [-v]
    estimator-vgg neighbors OUTPUT_DIR QUERY [-k 10] [--html PAGE.html]
    estimator-vgg neighbors OUTPUT_DIR --duplicates 0.95 [--html PAGE.html] [--pairs P.parquet]
    estimator-vgg index OUTPUT_DIR [--pca DIMS] [--kind auto|flat|ivf|ivfpq|hnsw]
    estimator-vgg compare A B [--max-rel-l2 X] [--min-cosine C] [--json]   (compare.py)
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

RUN_EPILOG = """\
commands:
  estimator-vgg CONFIG.yaml ...        embed every image of input.dir or input.list (this
                                       command)
  estimator-vgg neighbors OUTPUT ...   similar images and near-duplicates in an output
                                       (estimator-vgg neighbors --help)
  estimator-vgg index OUTPUT ...       an approximate nearest-neighbour index (faiss) that
                                       neighbors then uses (estimator-vgg index --help)
  estimator-vgg compare A B ...        two outputs or golden files, row by row, with
                                       thresholds for CI (estimator-vgg compare --help)

examples:
  estimator-vgg configs/demo.yaml
  estimator-vgg configs/prod.yaml --dry-run
  estimator-vgg configs/prod.yaml devices.gpus=[0,1] devices.batch_size=32
  estimator-vgg configs/prod.yaml output.dir=/data/fc7 output.format=npy

most used keys (all of them: docs/configuration.md):
  input.dir            folder of images, scanned recursively, or an s3:// or gs:// prefix
  input.list           a .csv/.tsv/.parquet/.jsonl/.txt naming the images (paths or URIs)
  input.expand_tars    read .tar shards' images without extracting them (docs/inputs.md)
  output.dir           where features/, errors/ and manifest.json are written
  output.format        parquet (default), npy or csv
  model.weights        imagenet, a Keras .h5, a tensorflow-vgg .npy, or synthetic
  devices.gpus         GPU ids, one tower each, e.g. [0,1,2,3]
  devices.cpus         number of CPU towers when there is no GPU
  devices.batch_size   images per tower per step
  input.max_error_fraction   failed files tolerated before the job stops (default 0.05)

exit codes: 0 every file embedded; 3 done, some files in the errors table;
            1 the job failed; 2 the config is wrong.
A killed job resumes when the same command is run again.
"""

NEIGHBORS_EPILOG = """\
examples:
  estimator-vgg neighbors out/demo demo_images/chelsea_cat.JPG -k 5
  estimator-vgg neighbors out/demo chelsea_cat.JPG --html similar.html
  estimator-vgg neighbors out/demo --duplicates 0.95 --html duplicates.html
  estimator-vgg neighbors out/demo chelsea_cat.JPG --exact

A QUERY that is a `path` of the output uses its stored row; an image file is embedded on the
fly with the weights and preprocessing the output was made with. With an index
(estimator-vgg index OUTPUT) the search goes through it, and the first line says so and what
the scores are (cosine of fc7, or of the index's PCA codes); parts the output committed after
the index was built are searched exactly and the index is reported stale. Without one, or
with --exact, scores are exact cosine similarities of fc7, one part of the output at a time.
--duplicates writes every pair to --pairs (default OUTPUT/index/duplicates.parquet, or
OUTPUT/duplicates.parquet without an index): columns path_a, path_b, score.
"""

INDEX_EPILOG = """\
examples:
  estimator-vgg index out/demo                       # auto: the kind from rows and memory
  estimator-vgg index out/big --pca 256              # 256-d PCA codes, L2-normalised
  estimator-vgg index out/big                        # again later: adds only the new parts

The index is written to OUTPUT/index/ while the output's lock is held; it records the parts
it covers, the output's fingerprint and its output_id (an output rebuilt with --overwrite
gets another, and its old index is deleted). Needs the search extra (faiss):
ESTIMATOR_VGG_SEARCH=1 ./run.sh ... installs it. Details: docs/neighbors.md.
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if verbose:
        # Importing estimator_vgg quieted TensorFlow's log (quiet.py); -v is the same switch as
        # ESTIMATOR_VGG_VERBOSE=1 and undoes that, before TensorFlow is imported.
        from estimator_vgg import quiet
        quiet.set_verbose()


def _quiet_tensorflow(verbose: bool) -> None:
    if not verbose:
        import tensorflow  # noqa: F401

        from estimator_vgg import quiet
        quiet.tensorflow_imported()


def _storage_options_argument(parser) -> None:
    parser.add_argument("--storage-options", metavar="JSON", type=_json_mapping,
                        help="for an output on an object store: the fsspec options it is read "
                             "with, as JSON (e.g. '{\"endpoint_url\": \"http://...\"}'); "
                             "default: the library's own credentials")


def _json_mapping(text: str) -> dict:
    import json
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object (key: value) is needed")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "neighbors":
        return neighbors_main(argv[1:])
    if argv and argv[0] == "index":
        return index_main(argv[1:])
    if argv and argv[0] == "compare":
        from estimator_vgg.compare import main as compare_main
        return compare_main(argv[1:])
    return run_main(argv)


def run_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="estimator-vgg", description="Extract VGG16 fc7 features (4096 floats per image) "
        "for every image under input.dir, over every configured device.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the job's YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override a config value (read as YAML); beats the file")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be done (files by extension, done, to do, "
                             "devices, weights) without loading TensorFlow or the model")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete features, errors, manifest and index already in output.dir and "
                             "start afresh (same as output.overwrite=true)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines and full tracebacks (sets "
                             "ESTIMATOR_VGG_VERBOSE=1, the library's switch)")
    args = parser.parse_intermixed_args(argv)  # flags may stand between the overrides
    _setup_logging(args.verbose)
    log = logging.getLogger("estimator_vgg")

    from estimator_vgg.config import ConfigError, load_config
    try:
        overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"estimator-vgg: config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from estimator_vgg.listing import ListingError
        from estimator_vgg.plan import dry_run
        try:
            print(dry_run(cfg))
        except ConfigError as e:  # an unusable input.list
            print(f"estimator-vgg: config error: {e}", file=sys.stderr)
            return 2
        except ListingError as e:
            print(f"estimator-vgg: error: {e}", file=sys.stderr)
            return 1
        return 0

    _quiet_tensorflow(args.verbose)
    from tqdm.contrib.logging import logging_redirect_tqdm

    import tensorflow as tf

    from estimator_vgg.devices import DeviceError
    from estimator_vgg.listing import ListingError
    from estimator_vgg.progress import for_stream
    from estimator_vgg.runner import JobError, run
    from estimator_vgg.store import OutputError
    from estimator_vgg.weights import WeightsError
    try:
        with logging_redirect_tqdm():
            summary = run(cfg, progress=for_stream(sys.stderr))
    except ConfigError as e:  # found while reading the input: an unusable list, a missing extra
        print(f"estimator-vgg: config error: {e}", file=sys.stderr)
        return 2
    except (JobError, DeviceError, WeightsError, OutputError, ListingError, OSError,
            tf.errors.OpError) as e:  # OSError, OpError: a full disk, a lost mount, a device map
        if args.verbose:
            log.exception("failed")
        ours = isinstance(e, (JobError, DeviceError, WeightsError, OutputError, ListingError))
        hint = "" if ours else (". The parts written so far are kept: rerun the same command "
                                "to resume (-v shows the traceback)")
        print(f"estimator-vgg: error: {getattr(e, 'message', None) or e}{hint}", file=sys.stderr)
        return 1
    print(summary_text(summary, cfg.output.format))
    if summary.exit_code == 1:
        print(f"estimator-vgg: more than input.max_error_fraction="
              f"{cfg.input.max_error_fraction} of the files failed", file=sys.stderr)
    return summary.exit_code


def summary_text(s, fmt: str) -> str:
    if s.noop:
        head = (f"estimator-vgg: nothing to do: all {s.files} files are already done "
                f"({s.features} features, {s.error_count} errors) in {s.output}")
    else:
        head = f"estimator-vgg: done, {s.new_files} new files"
    lines = [head,
             f"  images      {s.files}",
             f"  features    {s.features}",
             f"  errors      {s.error_count}"]
    lines += [f"    {reason:<22} {n}" for reason, n in s.errors.items()]
    if not s.noop:
        first = "first shard done" if s.executor == "ray" else "first batch"
        lines += [f"  wall time   {s.seconds:.1f} s ({first} after {s.first_batch_s:.1f} s)",
                  f"  images/s    {s.images_per_s:.2f}"]
    lines.append(f"  output      {s.output} ({fmt}: features/, errors/, manifest.json)")
    if s.error_count:
        lines.append(f"  the errors table: pandas.read_parquet('{s.output}/errors')")
    return "\n".join(lines)


def neighbors_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="estimator-vgg neighbors", description="Images most similar to a query, or groups "
        "of near-duplicates, in the output of a job.", epilog=NEIGHBORS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the job's output.dir (a folder, or an s3:// or gs:// "
                        "prefix)")
    parser.add_argument("query", nargs="?", help="an image file, or a path in the output")
    parser.add_argument("-k", type=int, default=10, help="how many neighbours (default 10)")
    parser.add_argument("--duplicates", type=float, metavar="THRESHOLD",
                        help="list groups of images with cosine similarity >= THRESHOLD")
    parser.add_argument("--pairs", metavar="PAIRS.parquet",
                        help="with --duplicates: where to write the pairs (default "
                             "OUTPUT/index/duplicates.parquet)")
    parser.add_argument("--exact", action="store_true",
                        help="exact search over every part even when there is an index")
    parser.add_argument("--html", metavar="PAGE.html",
                        help="also write a self-contained page with thumbnails")
    _storage_options_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines and full tracebacks")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.duplicates is None):
        parser.error("give a QUERY, or --duplicates THRESHOLD (not both)")
    if args.k < 1:
        parser.error("-k must be at least 1")
    if args.pairs and args.duplicates is None:
        parser.error("--pairs goes with --duplicates")
    _setup_logging(args.verbose)
    from estimator_vgg.manifest import OutputError
    from estimator_vgg.searcher import SearchError
    try:
        _neighbors(args)
    except (SearchError, OutputError, FileNotFoundError, ValueError) as e:  # ValueError: a
        print(f"estimator-vgg neighbors: error: {e}", file=sys.stderr)  # ConfigError,
        return 1                                                        # WeightsError too
    return 0


def _neighbors(args) -> None:
    """neighbors: open the searcher, ask it, print what it says (and write the page)."""
    from pathlib import Path

    from estimator_vgg.query import image_source
    from estimator_vgg.search import describe_output, nearest_to, open_searcher
    from estimator_vgg.searcher import groups_of, write_pairs

    from estimator_vgg.storage import Folder

    searcher = open_searcher(args.output, exact=args.exact, say=lambda line: print(
        f"estimator-vgg neighbors: {line}", file=sys.stderr),
        storage_options=args.storage_options)
    out = searcher.output
    locate = lambda path: image_source(out, path)  # noqa: E731
    if args.duplicates is not None:
        a, b, s = searcher.duplicate_pairs(args.duplicates)
        groups = groups_of(a, b, s, searcher.path_of)
        loc, name = ((Folder(Path(args.pairs).parent), Path(args.pairs).name) if args.pairs
                     else searcher.pairs_file)
        write_pairs((loc, name), a, b, s, searcher.path_of)
        pairs = f"{loc}/{name}"
        print(f"{len(groups)} group{'s' if len(groups) != 1 else ''} with cosine "
              f"similarity >= {args.duplicates} ({searcher.how()})")
        for n, group in enumerate(groups, 1):
            print(f"group {n} ({len(group)} images)")
            for m in group:
                print(f"  {m.score:.4f}  {m.path}")
        print(f"wrote {len(s)} pairs to {pairs}")
        if args.html:
            _quiet_tensorflow(args.verbose)
            from estimator_vgg.page import duplicates_page
            duplicates_page(groups, locate, Path(args.html), args.duplicates,
                            describe_output(out), scores=searcher.scores_are, pairs_file=pairs)
    else:
        if searcher.row_of(args.query) is None:  # an image file: embedded with TensorFlow
            _quiet_tensorflow(args.verbose)
        matches = nearest_to(searcher, args.query, args.k)
        print(f"{len(matches)} nearest to {args.query} ({searcher.how()})")
        for rank, m in enumerate(matches, 1):
            print(f"{rank:>4}  {m.score:.4f}  {m.path}")
        if args.html:
            _quiet_tensorflow(args.verbose)
            from estimator_vgg.page import neighbors_page
            own = searcher.row_of(args.query) is not None
            neighbors_page(locate(args.query) if own else Path(args.query), args.query,
                           matches, locate, Path(args.html), describe_output(out))
    if args.html:
        print(f"wrote {args.html}")


def index_main(argv: List[str]) -> int:
    from estimator_vgg.index import DEFAULT_MEMORY_MB, KINDS
    parser = argparse.ArgumentParser(
        prog="estimator-vgg index", description="Build an approximate nearest-neighbour index "
        "(faiss) over every committed part of an output, or add the parts committed since.",
        epilog=INDEX_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the job's output.dir (a folder, or an s3:// or gs:// "
                        "prefix: the index is built here and written to its index/)")
    parser.add_argument("--pca", type=int, metavar="DIMS",
                        help="learn a PCA and index L2-normalised DIMS-d codes (e.g. 256)")
    parser.add_argument("--whiten", action="store_true",
                        help="with --pca: divide each component by its standard deviation")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="auto (default: chosen from the rows and --memory-mb, printed "
                             "with the reason), flat (exact), ivf, ivfpq, hnsw")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                        help=f"memory budget of the build (default {DEFAULT_MEMORY_MB}): bounds "
                             f"the training sample and decides what kind fits")
    parser.add_argument("--nprobe", type=int,
                        help="ivf/ivfpq: lists scanned per query (default 16; hnsw: efSearch/4)")
    parser.add_argument("--train-rows", type=int,
                        help="rows in the training sample (default 50000, or what fits a "
                             "quarter of --memory-mb)")
    parser.add_argument("--rebuild", action="store_true",
                        help="build afresh instead of adding the new parts")
    _storage_options_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from estimator_vgg.index import build_index
    from estimator_vgg.manifest import ManifestError, OutputError
    from estimator_vgg.searcher import SearchError
    say = lambda line: print(f"estimator-vgg index: {line}", flush=True)  # noqa: E731
    try:
        r = build_index(args.output, kind=args.kind, pca=args.pca, whiten=args.whiten,
                        memory_mb=args.memory_mb, nprobe=args.nprobe,
                        train_rows=args.train_rows, rebuild=args.rebuild, say=say,
                        storage_options=args.storage_options)
    except (SearchError, OutputError, ManifestError, FileNotFoundError) as e:
        print(f"estimator-vgg index: error: {e}", file=sys.stderr)
        return 1
    say(f"{'built' if r.fresh else 'updated'} {r.record.describe()} in "
        f"{args.output.rstrip('/')}/index ({r.added_parts} parts, {r.added_rows} rows added, "
        f"{r.seconds:.1f} s); neighbors' scores: {r.record.scores_are(rescored=True)}")
    return 0
