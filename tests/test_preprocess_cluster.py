"""Placement on a real multi-node Ray cluster on one machine: decode work runs on the decode node."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from crashchat.config import PreprocessConfig
from crashchat.video.pipeline import PreprocessInputs, run_preprocess
from crashchat.video.samples import read_samples_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def three_node_cluster():
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    decode = cluster.add_node(num_cpus=2, resources={"cpu_decode": 4})
    cluster.add_node(num_cpus=1, resources={"gpu_node": 1})  # stands in for a GPU node
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster, decode.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_all_decode_work_runs_on_the_cpu_decode_node(
    three_node_cluster, synth_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cluster, decode_node = three_node_cluster
    assert len(ray.nodes()) == 3
    cfg = PreprocessConfig(workers=2, decode_num_cpus=0.5)
    inputs = PreprocessInputs([synth_dir], synth_dir, tiny_model_dir, tmp_path)
    result = run_preprocess(cfg, inputs, address=cluster.address)
    assert result.failures == [] and result.samples > 0
    nodes = set(read_samples_table(tmp_path)["decode_node"].to_pylist())
    assert nodes == {decode_node}
    assert "pinned to nodes with resource 'cpu_decode'" in result.manifest["placement"]
