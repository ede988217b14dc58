"""The output stage alone, as the job drives it (no model): commits PARTS synthetic parts of
ROWS rows each into an output on an object store, from the output's next part on, so a test
can kill it mid-commit (ESTIMATOR_VGG_FAULT) and run it again.

    python tests/store_driver.py s3://bucket/out '{"endpoint_url": ...}' PARTS ROWS [MULTIPART_MB]

Part k's rows are made from seed k, so every run writes the same parts.
"""
import json
import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")

from estimator_vgg.bucket_store import BucketStore  # noqa: E402
from estimator_vgg.manifest import Fingerprint, RunRecord  # noqa: E402
from estimator_vgg.sections import OutputConfig  # noqa: E402


def part_rows(k: int, rows: int):
    rng = np.random.default_rng(k)
    return ([f"p{k}/{i}.jpg" for i in range(rows)],
            np.maximum(rng.standard_normal((rows, 4096), dtype=np.float32), 0))


def main(uri: str, options: str, parts: int, rows: int, multipart_mb: int = 64) -> None:
    cfg = OutputConfig(dir=uri, storage_options=json.loads(options), multipart_mb=multipart_mb,
                       retries=1, request_timeout_s=30)
    store = BucketStore(cfg)
    store.open(Fingerprint.from_dict({"output_format": "parquet", "model": "synthetic"}),
               {"input": {"dir": "none"}}, overwrite=False)
    try:
        for k in range(store.next_index(), parts):
            paths, fc7 = part_rows(k, rows)
            store.commit(k, paths, fc7, [])
        store.finish(RunRecord(started=time.strftime("%Y-%m-%dT%H:%M:%S"), command=[],
                               versions={}, devices=[]), complete=True)
    finally:
        store.close()


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
