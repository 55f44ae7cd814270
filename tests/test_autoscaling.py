"""`raycut train` on an autoscaling cluster: Ray's fake multi-node autoscaler
(ray.cluster_utils.AutoscalingCluster) on this machine. The head has no CPUs and the
cluster starts with no workers, as the shipped cluster configs do: the trainers get
their nodes from the autoscaler, and each domain's decode pool (--data-actors 2-3)
holds more than one actor, on the CPU nodes the autoscaler adds, although none of
them existed when the run started (nothing is sized from the cluster at launch: it
had no CPUs then). The two trainers are spread over two of those nodes (gloo DDP) and
end with equal replicas; the registered model comes back from MLflow by
``models:/NAME@latest`` and translates as the trained generator did."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import AutoscalingCluster
from safetensors.numpy import load_file

from cut_core import load_generator
from cut_core.images import to_model_input, to_uint8_images
from jobs.tracking import resolve_model_dir
from jobs.train.driver import run_train
from jobs.train.spec import Schedule, TrainOptions
from jobs.train.worker import FINAL_SAMPLES
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import TINY_SETS, no_local_ray

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


def _assert_same_up_to_rounding(got: np.ndarray, want: np.ndarray) -> None:
    """Equal uint8 images, but for at most 0.1% of values off by one level."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.fixture
def autoscaling_cluster(monkeypatch):
    # AutoscalingCluster runs the `ray` command: this environment's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    no_local_ray()
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
        placement="strict-spread", register="toy-autoscaled",
        schedule=Schedule(log_every=10, checkpoint_every=20, sample_every=40),
    ))
    m = result.metrics
    assert m["step"] == 40 and result.model_version == "1"
    assert MlflowClient().get_model_version("toy-autoscaled", "1").status == "READY"
    # One rank per node (strict-spread over nodes the autoscaler added), gloo DDP
    # between them: after the steps the two replicas of G, D and F are identical.
    assert m["nodes"] == 2 and m["replica_divergence"] == 0.0
    assert result.job.global_batch == 4 and result.job.steps_per_epoch == 4  # 16 images / (2 per worker x 2)
    # The registered model, fetched by alias, translates as the trained in-memory
    # generator did on rank 0 (its outputs were saved with the last checkpoint). Up to
    # a rare rounding flip: that worker ran torch with 1 thread and this process with
    # 2, oneDNN's kernels follow the thread count, and a last-bit difference in fp32
    # can cross a uint8 boundary (seen once: 1 pixel of 12288, by 1 level).
    saved = load_file(str(result.checkpoint_dir / FINAL_SAMPLES))
    model_dir = resolve_model_dir("models:/toy-autoscaled@latest", cache=tmp_path / "fetched")
    G = load_generator(model_dir)
    _assert_same_up_to_rounding(to_uint8_images(G(to_model_input(saved["input"]))), saved["output"])
    pyfunc = mlflow.pyfunc.load_model("models:/toy-autoscaled@latest")
    _assert_same_up_to_rounding(pyfunc.predict(saved["input"]), saved["output"])
    assert saved["output"].shape == (4, 32, 32, 3) and saved["output"].std() > 0

    head = ray.get_runtime_context().get_node_id()  # the driver runs on the head
    decoders = {d: [a for a in list_actors(detail=True, limit=1000) if f"MapBatches(Decode{d})" in a.class_name]
                for d in ("A", "B")}
    for domain, actors in decoders.items():
        # At least the pool's minimum of 2 (up to 3 while data is short), none on the head.
        assert len(actors) >= 2, (domain, [a.class_name for a in actors])
        assert all(a.node_id != head for a in actors)  # on nodes the autoscaler added
    # 2 trainer CPUs + 2 x 2 decode CPUs on nodes of 2: the autoscaler added at least 3.
    assert sum(1 for n in ray.nodes() if n["NodeID"] != head) >= 3
