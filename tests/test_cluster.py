"""A multi-node Ray on loopback (ray.cluster_utils.Cluster): a CPU-only head for the
driver, worker nodes declaring logical GPUs for the fine-tunes. Removing a node mid-build
loses nothing: its job is retried elsewhere."""

from __future__ import annotations

import threading
import time

import pytest

from tans.pipeline.execution.config import load_config
from tans.pipeline.execution.run import run_build
from tans.zoo_schema.journal import read_failures, read_starts
from tans.zoo_schema.results import read_results
from tans.zoo_schema.store import open_store

pytestmark = pytest.mark.slow  # real processes, Ray clusters, file systems


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, configure_logging=False, log_to_driver=False)
    yield c, gpu_nodes
    ray.shutdown()
    c.shutdown()


@pytest.mark.parametrize("warm", [False, True], ids=["tasks", "warm-workers"])
def test_fine_tunes_land_on_gpu_nodes_and_node_loss_is_survived(cluster, tiny_datasets, tmp_path, warm, monkeypatch):
    """With fresh tasks or warm workers. A warm worker the cluster places on the lost node's
    resources (still counted for a while) is given up after START_DEADLINE_S, shortened here."""
    import ray

    from tans.pipeline.execution import pool as pool_module

    monkeypatch.setattr(pool_module, "START_DEADLINE_S", 15.0)
    c, gpu_nodes = cluster
    head_id = ray.get_runtime_context().get_node_id()
    zoo = str(tmp_path / "zoo")
    store = open_store(zoo)
    config = load_config(
        None,
        {
            "zoo": zoo,
            "datasets": [str(tiny_datasets)],
            "max_jobs": 4,
            "strategy": "random",
            "train.epochs": 1,
            "train.latency_repeats": 3,
            "arch.pool_size": 10,
            "resources.num_gpus": 1.0,
            "resources.num_cpus": 1.0,
            "resources.warm_workers": warm,
            "retrain.after_build": False,
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        },
    )
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run_build(config)))
    thread.start()
    deadline = time.time() + 300
    while not store.list("journal/starts") and time.time() < deadline:
        time.sleep(0.2)
    victim_node = read_starts(store)[0]["node_id"]
    node = next(n for n in gpu_nodes if n.node_id == victim_node)
    c.remove_node(node)
    gpu_nodes.remove(node)
    try:
        thread.join(600)
    finally:
        gpu_nodes.append(c.add_node(num_cpus=1, num_gpus=1))  # the next test's cluster: two GPU nodes
        c.wait_for_nodes()
    assert outcome["summary"].finished == 4
    starts = read_starts(store)
    assert all(s["node_id"] != head_id for s in starts)  # no fine-tune on the CPU head
    assert {s["node_id"] for s in starts} <= {n.node_id for n in [*gpu_nodes, node]}
    failures = read_failures(store)
    assert len(failures) >= 1  # the job on the removed node, retried on the other one
    assert {f.job_id for f in failures} <= {r.job_id for r in read_results(store)}
