"""Records read benchmark: Ray Data's default (V2) Parquet reader against the one ``read_samples`` uses.

Run: ``.venv/bin/python benchmarks/samples_read.py [--clips 9] [--rounds 4] [--data DIR]``

On a local three-node Ray cluster shaped as cluster/local/cluster.yaml (head 1 CPU, decode node 1,
stand-in GPU node 2), the same records table of a preprocessed synthetic dataset is read in full,
alternately by Ray 2.60's default reader (``use_datasource_v2``: a pool of FooterReader actors
spread over the nodes on every execution) and by ``crashchat.video.samples.read_samples`` (the V1
reader, files listed in the driver). Every read is one dataset execution, as each training
epoch, validation pass and evaluation is. The first read of each is cold (new worker
processes). The last line prints ``v1_speedup_cold=A v1_speedup_warm=B`` (V2 time over V1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_overhead import _build_data


def _timed_read(data: Path, v2: bool) -> tuple[float, int]:
    import ray.data

    from crashchat.video.samples import RECORD_SCHEMA, SAMPLES_DIR, read_samples

    start = time.perf_counter()
    if v2:
        ray.data.DataContext.get_current().use_datasource_v2 = True
        ds = ray.data.read_parquet(str(data / SAMPLES_DIR), schema=RECORD_SCHEMA)
    else:
        ds = read_samples(data)
    rows = sum(len(b["record_id"]) for b in ds.iter_batches(batch_format="pyarrow"))
    return time.perf_counter() - start, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, help="a preprocessed dataset (default: build one)")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    data = args.data
    if data is None:
        root = Path(tempfile.mkdtemp(prefix="samples-read-bench-"))
        print(f"building data in {root}", flush=True)
        data, _ = _build_data(root, args.clips)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"cpu_decode": 4})
    cluster.add_node(num_cpus=2, resources={"gpu_node": 4})
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        ray.data.DataContext.get_current().enable_progress_bars = False
        for i in range(args.rounds):
            for v2 in (True, False):
                seconds, rows = _timed_read(data, v2)
                times[v2].append(seconds)
                print(f"round {i} {'v2 (default)' if v2 else 'v1 (read_samples)'}: "
                      f"{rows} rows in {seconds:.2f} s", flush=True)  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
    cold = times[True][0] / times[False][0]
    warm = statistics.median(times[True][1:]) / statistics.median(times[False][1:])
    print(f"v1_speedup_cold={cold:.1f} v1_speedup_warm={warm:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
