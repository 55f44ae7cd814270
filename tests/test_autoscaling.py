"""`raycut train` on an autoscaling cluster: Ray's fake multi-node autoscaler
(ray.cluster_utils.AutoscalingCluster) on this machine. The head has no CPUs and the
cluster starts with no workers, as the shipped cluster configs do: the trainers get
their nodes from the autoscaler, and each domain's decode pool (--data-actors 2-3)
holds more than one actor, on the CPU nodes the autoscaler adds, although none of
them existed when the run started (nothing is sized from the cluster at launch: it
had no CPUs then)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import AutoscalingCluster

from jobs.train.driver import run_train
from jobs.train.spec import Schedule, TrainOptions
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import TINY_SETS

pytestmark = pytest.mark.slow


class FakeAutoscalingCluster(AutoscalingCluster):
    """AutoscalingCluster reads its base config from an example YAML that Ray's wheel
    does not ship; this is that config: Ray's fake multi-node provider, which starts
    "nodes" as raylets on this machine when the autoscaler asks for them."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = {
            "cluster_name": "raycut-fake", "max_workers": 8, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": {**worker_node_types, "ray.head.default": {
                "resources": head_resources, "node_config": {}, "max_workers": 0}},
            "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": [], **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                                                   "worker_setup_commands", "head_start_ray_commands",
                                                   "worker_start_ray_commands")},
        }
        config.update(config_kwargs)
        return config


@pytest.fixture
def autoscaling_cluster(monkeypatch):
    # AutoscalingCluster runs the `ray` command: this environment's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0,
                                        "max_workers": 3}},
    )
    cluster.start()
    ray.init("auto", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_train_grows_with_the_cluster_and_registers(autoscaling_cluster, tmp_path, monkeypatch):
    from ray.util.state import list_actors

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ray.cluster_resources().get("CPU", 0) == 0  # nothing to run on at launch
    toy = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=16, n_test=2))
    result = run_train(TrainOptions(
        preset="fastcut", data_a=f"cyclegan:{toy}:trainA", data_b=f"cyclegan:{toy}:trainB", sets=TINY_SETS,
        workers=2, cpus_per_worker=1, data_actors="2-3", steps=40, storage_path=str(tmp_path / "runs"), name="auto",
        register="toy-autoscaled", schedule=Schedule(log_every=10, checkpoint_every=40, sample_every=40),
    ))
    assert result.metrics["step"] == 40 and result.model_version == "1"
    assert MlflowClient().get_model_version("toy-autoscaled", "1").status == "READY"

    head = ray.get_runtime_context().get_node_id()  # the driver runs on the head
    decoders = {d: [a for a in list_actors(detail=True, limit=1000) if f"MapBatches(Decode{d})" in a.class_name]
                for d in ("A", "B")}
    for domain, actors in decoders.items():
        # At least the pool's minimum of 2 (up to 3 while data is short), none on the head.
        assert len(actors) >= 2, (domain, [a.class_name for a in actors])
        assert all(a.node_id != head for a in actors)  # on nodes the autoscaler added
    # 2 trainer CPUs + 2 x 2 decode CPUs on nodes of 2: the autoscaler added at least 3.
    assert sum(1 for n in ray.nodes() if n["NodeID"] != head) >= 3
