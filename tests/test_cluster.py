"""Cluster use against a real autoscaling Ray cluster on this machine: Ray's fake
multi-node autoscaler (ray.cluster_utils.AutoscalingCluster), started as `ray start
--head` starts one, with token authentication and the job server on localhost. The head
has no CPUs and the cluster starts with no workers, as the shipped cluster configs do.
`raycut submit` / `raycut jobs` drive it as a user would; `raycut train`, submitted,
gets its trainers and decode actors from nodes the autoscaler adds. The cluster
configuration files are checked for the keys and the safety settings they need."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray._private import services as ray_services
from ray.cluster_utils import AutoscalingCluster
from safetensors.numpy import load_file

from cut_core import load_generator
from cut_core.images import to_model_input, to_uint8_images
from jobs.tracking import resolve_model_dir
from jobs.train.worker import FINAL_SAMPLES
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import TINY_SETS, free_ports, no_local_ray, patience

# One pytest worker runs the whole module (`make test` runs --dist loadgroup), so the
# cluster starts once; it runs beside the other worker's tests and their Rays.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
TESTS = ROOT / "tests"
SHARED_CRDS = ROOT.parent / "shared" / "data" / "kuberay-crds"  # the full CRDs, beside a development checkout


class FakeAutoscalingCluster(AutoscalingCluster):
    """Ray's fake multi-node autoscaler as a cluster of its own beside any other Ray on
    this machine: AutoscalingCluster runs `ray stop --force`, which stops every Ray here
    (the other pytest worker's included), on the default ports. This one starts its head
    on free ports and under a temp dir of its own, and stops only the processes under
    that dir (and their children, the workers), so the suite runs it in parallel with the
    rest. Its base config, which Ray's wheel does not ship, is Ray's fake multi-node
    provider: it starts "nodes" as raylets on this machine when the autoscaler asks."""

    def __init__(self, head_resources: dict, worker_node_types: dict) -> None:
        self.ip = ray_services.get_node_ip_address()
        self.gcs_port, self.dashboard_port, self.client_port, self.agent_port = free_ports(4)
        # Short: Ray's unix socket paths under it must fit in 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rcf", dir="/tmp")
        super().__init__(head_resources, worker_node_types)

    @property
    def gcs_address(self) -> str:
        return f"{self.ip}:{self.gcs_port}"

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = {
            "cluster_name": "raycut-fake", "max_workers": 8, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
            # gcs_address: the provider's nodes join this head (it assumes port 6379 without it).
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.gcs_address},
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

    def start(self, override_env: dict | None = None) -> None:
        """`ray start --head` as AutoscalingCluster runs it, less its `ray stop --force`,
        on this cluster's own ports and temp dir."""
        config = Path(self.temp_dir) / "autoscaling.json"
        config.write_text(json.dumps(self._config))
        cmd = ["ray", "start", "--head", f"--autoscaling-config={config}", f"--num-cpus={self._head_resources['CPU']}",
               f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={self.client_port}", f"--dashboard-agent-listen-port={self.agent_port}",
               f"--temp-dir={self.temp_dir}"]
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", **(override_env or {})}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=patience(120))
        assert r.returncode == 0, f"`ray start --head` failed: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        ray_services.find_gcs_addresses.cache_clear()

    def shutdown(self) -> None:
        """SIGKILL every process whose command line names this cluster's temp dir (its GCS,
        raylets, dashboard, agents, autoscaler) and every child of theirs (the workers,
        whose names Ray rewrites); nothing of a test cluster needs saving, and no other
        Ray on the machine is touched."""
        own = [p for p in psutil.process_iter(["cmdline"]) if self.temp_dir in " ".join(p.info["cmdline"] or ())]
        doomed = {p.pid: p for p in own}
        for p in own:
            with contextlib.suppress(psutil.Error):
                doomed.update({c.pid: c for c in p.children(recursive=True)})
        for p in doomed.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(doomed.values()), timeout=patience(30))
        ray_services.find_gcs_addresses.cache_clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    """The cluster: a CPU-0 head (`ray start --head` with token authentication and the
    job server on 127.0.0.1) and up to three 2-CPU nodes that the autoscaler adds on
    demand. Any other Ray on this machine runs on (this process's own shared one is
    stopped first: the tests connect to the cluster)."""
    token = secrets.token_hex(16)
    # The head's jobs, and AutoscalingCluster itself, run `python` and `ray` from PATH:
    # this environment's, as on a cluster image.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    no_local_ray()
    saved_path = os.environ["PATH"]
    os.environ["PATH"] = path
    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0,
                                        "max_workers": 3}},
    )
    try:
        cluster.start(override_env=auth)
        yield {"address": f"http://127.0.0.1:{cluster.dashboard_port}", "gcs_address": cluster.gcs_address,
               "env": {**os.environ, **auth, "PATH": path}}
    finally:
        cluster.shutdown()
        os.environ["PATH"] = saved_path


def _raycut(args: list[str], cwd: Path, env: dict[str, str], timeout: float = patience(600)) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# The cluster as Ray's State API sees it, asked from a process of its own: this one's Ray
# was imported without the token (Ray reads its auth mode at import).
_CLUSTER_STATE = """
import json, ray
from ray.util.state import list_actors
ray.init("auto", log_to_driver=False)
head = ray.get_runtime_context().get_node_id()
decoders = {d: [a.node_id for a in list_actors(detail=True, limit=1000) if f"MapBatches(Decode{d})" in a.class_name]
            for d in ("A", "B")}
print(json.dumps({"head": head, "decoders": decoders, "nodes": [n["NodeID"] for n in ray.nodes()]}))
"""


def _assert_same_up_to_rounding(got: np.ndarray, want: np.ndarray) -> None:
    """Equal uint8 images, but for at most 0.1% of values off by one level."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.cost(90)
def test_submitted_train_grows_the_cluster_streams_its_logs_and_registers(head, tmp_path):
    """`raycut submit -- raycut train` to the CPU-0 head: the command waits and streams
    the job's lines; the trainers (strict-spread, gloo DDP) and each domain's decode pool
    (--data-actors 2-3) run on nodes the autoscaler adds although none existed at launch
    (nothing is sized from the cluster then); MLflow and the storage path reach the job
    through the environment; the registered model, fetched by alias, translates as the
    trained generator did."""
    toy = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=16, n_test=2))
    env = {**head["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "RAYCUT_STORAGE_PATH": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT)}
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    # Waiting is the default, as with `ray job submit`. The data paths are absolute: the
    # fake nodes share this machine's disk, and one that unpacks a --working-dir for its
    # actors replaces the head's copy under the running job (--working-dir is tested
    # with a job on the head alone, below).
    r = _raycut(["submit", "--address", head["address"], "--no-pip", "--", "raycut", "train",
                 "--preset", "fastcut", "--data-a", f"cyclegan:{toy}:trainA", "--data-b", f"cyclegan:{toy}:trainB", *sets,
                 "--workers", "2", "--cpus-per-worker", "1", "--data-actors", "2-3", "--placement", "strict-spread",
                 "--steps", "40", "--log-every", "10", "--checkpoint-every", "20", "--sample-every", "40",
                 "--name", "submitted", "--register", "toy-autoscaled"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = re.search(r"\[submit\] job (\S+) submitted", r.stdout).group(1)
    assert "[train] done: submitted" in r.stdout and f"job {job_id} SUCCEEDED" in r.stdout  # the logs streamed here
    # 16 images / (2 per worker x 2 workers): 4 steps per epoch, on two nodes.
    assert "2 worker(s) on 2 node(s)" in r.stdout and "(global batch 4), 40 steps of 4 per epoch" in r.stdout

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("raycut").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["raycut.run"] == "submitted"
    # One rank per node, gloo DDP between them: after the steps the replicas are identical.
    m = run.data.metrics
    assert m["nodes"] == 2 and m["replica_divergence"] == 0.0
    assert max(h.step for h in client.get_metric_history(run.info.run_id, "NCE")) == 40
    assert client.get_model_version("toy-autoscaled", "1").status == "READY"
    # RAYCUT_STORAGE_PATH reached the job: the run's folder is where it points.
    done = json.loads((tmp_path / "runs" / "submitted" / "done.json").read_text())
    assert done["steps"] == 40 and done["mlflow_run_id"] == run.info.run_id and done["version"] == "1"

    # The registered model, fetched by alias, translates as the trained generator did on
    # rank 0 (its outputs were saved with the last checkpoint). Up to a rare rounding
    # flip: that worker ran torch with 1 thread and this process with 2, oneDNN's kernels
    # follow the thread count, and a last-bit difference in fp32 can cross a uint8
    # boundary (seen once: 1 pixel of 12288, by 1 level).
    (final,) = (tmp_path / "runs" / "submitted").glob(f"checkpoint_*/{FINAL_SAMPLES}")
    saved = load_file(str(final))
    model_dir = resolve_model_dir("models:/toy-autoscaled@latest", uri=env["MLFLOW_TRACKING_URI"],
                                  cache=tmp_path / "fetched")  # sets MLflow's tracking URI in this process
    pyfunc = mlflow.pyfunc.load_model("models:/toy-autoscaled@latest")
    G = load_generator(model_dir)
    _assert_same_up_to_rounding(to_uint8_images(G(to_model_input(saved["input"]))), saved["output"])
    _assert_same_up_to_rounding(pyfunc.predict(saved["input"]), saved["output"])
    assert saved["output"].shape == (4, 32, 32, 3) and saved["output"].std() > 0

    state = subprocess.run([sys.executable, "-c", _CLUSTER_STATE], env={**head["env"], "RAY_ADDRESS": head["gcs_address"]},
                           capture_output=True, text=True, timeout=patience(120))
    assert state.returncode == 0, state.stderr[-2000:]
    state = json.loads(state.stdout.strip().splitlines()[-1])
    for domain, nodes in state["decoders"].items():
        # At least the pool's minimum of 2 (up to 3 while data is short), none on the head.
        assert len(nodes) >= 2 and state["head"] not in nodes, (domain, nodes)
    # 2 trainer CPUs + 2 x 2 decode CPUs on nodes of 2: the autoscaler added at least 3.
    assert sum(1 for n in state["nodes"] if n != state["head"]) >= 3

    logs = _raycut(["jobs", "logs", job_id, "--address", head["address"]], cwd=tmp_path, env=env)
    assert logs.returncode == 0 and "[train] done: submitted" in logs.stdout
    listed = _raycut(["jobs", "list", "--address", head["address"]], cwd=tmp_path, env=env)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = _raycut(["jobs", "status", job_id, "--address", head["address"]], cwd=tmp_path, env=env)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED")


def test_failed_job_is_reported_with_its_last_lines(head, tmp_path):
    env = {**head["env"], "PYTHONPATH": str(ROOT)}
    r = _raycut(["submit", "--address", head["address"], "--wait", "--no-pip", "--", "raycut", "evaluate", "--toy",
                 str(tmp_path / "missing")], cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert "FAILED" in r.stdout and "  | raycut: error:" in r.stdout and "does not exist" in r.stdout


def test_a_dropped_log_stream_reconnects_and_prints_each_line_once(head, tmp_path):
    """`raycut submit` follows a job through the real job server; its first log stream
    is cut after two chunks (Ray's client raises, as on a closed WebSocket) while the job
    still prints. The follower reconnects, skips what it printed already, and exits with
    the job's status."""
    script = f"""
import sys
from ray.job_submission import JobSubmissionClient
from jobs.submit import follow

class DropsFirstStream(JobSubmissionClient):
    streams = 0

    async def tail_job_logs(self, job_id):
        self.streams += 1
        chunks = 0
        async for chunk in super().tail_job_logs(job_id):
            yield chunk
            chunks += 1
            if self.streams == 1 and chunks == 2:
                raise RuntimeError("connection closed unexpectedly")

client = DropsFirstStream({head["address"]!r})
job = client.submit_job(entrypoint="python -c \\"import time\\nfor i in range(6): print('line', i, flush=True); time.sleep(1)\\"")
code = follow(client, job)
print("streams", client.streams, "exit", code)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**head["env"], "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=patience(180))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert [line for line in lines if line.startswith("line ")] == [f"line {i}" for i in range(6)], r.stdout
    assert sum("dropped while it is RUNNING; reconnecting" in line for line in lines) == 1, r.stdout
    assert lines[-1].startswith("streams ") and int(lines[-1].split()[1]) >= 2 and lines[-1].endswith("exit 0"), r.stdout


def test_ctrl_c_while_following_leaves_the_job_running_and_says_so(head, tmp_path):
    """Ctrl-C during `raycut submit`'s log stream stops the watching, not the job: the
    interrupt says the job goes on and names the commands that watch and stop it. The
    client here raises an error of its own when its stream is torn down (as a closing
    WebSocket may): a Ctrl-C that only cancelled the stream read that as a dropped stream
    and watched on."""
    script = f"""
import asyncio, os, signal, threading, time
from ray.job_submission import JobSubmissionClient
from jobs.submit import follow

class RaisesOnCancel(JobSubmissionClient):
    async def tail_job_logs(self, job_id):
        try:
            async for chunk in super().tail_job_logs(job_id):
                yield chunk
        except asyncio.CancelledError:
            raise RuntimeError("connection closed while cancelling")

client = RaisesOnCancel({head["address"]!r})
job = client.submit_job(entrypoint="python -c \\"import time\\nprint('started', flush=True)\\ntime.sleep(120)\\"")
threading.Timer(8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    follow(client, job)
except KeyboardInterrupt as e:
    print("interrupted:", e)
print("status", client.get_job_status(job).value)
client.stop_job(job)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**head["env"], "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=patience(120))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    said = next(line for line in r.stdout.splitlines() if line.startswith("interrupted: "))
    job = said.split()[2]
    assert said == (f"interrupted: job {job} goes on running on the cluster: `raycut jobs logs {job} --follow` "
                    f"watches it again, `raycut jobs stop {job}` stops it"), r.stdout
    assert r.stdout.splitlines()[-1] in ("status RUNNING", "status PENDING"), r.stdout
    assert "Traceback" not in r.stderr and "exception" not in r.stderr.lower(), r.stderr[-2000:]


def test_no_wait_returns_at_once_and_the_job_runs_on_in_its_uploaded_folder(head, tmp_path):
    env = {**head["env"], "PYTHONPATH": str(ROOT)}
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "note.txt").write_text("uploaded with the job")
    out = tmp_path / "copied.txt"
    # --working-dir uploads this folder; the job's relative paths point into its copy.
    job = f"import shutil, time; time.sleep(2); shutil.copy('inputs/note.txt', {str(out)!r})"
    r = _raycut(["submit", "--address", head["address"], "--no-wait", "--no-pip", "--working-dir", ".", "--", "python",
                 "-c", job], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job_id = re.search(r"\[submit\] job (\S+) submitted", r.stdout).group(1)
    assert f"raycut jobs logs {job_id} --follow" in r.stdout and "SUCCEEDED" not in r.stdout  # it did not wait
    assert not out.exists()
    logs = _raycut(["jobs", "logs", job_id, "--follow", "--address", head["address"]], cwd=tmp_path, env=env)
    status = _raycut(["jobs", "status", job_id, "--address", head["address"]], cwd=tmp_path, env=env)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED"), logs.stdout[-2000:] + status.stdout
    assert out.read_text() == "uploaded with the job"  # the job ran on after submit returned, in its upload


def test_unreachable_or_unauthenticated_server_is_one_line(head, tmp_path):
    r = _raycut(["submit", "--address", "http://127.0.0.1:9", "--no-pip", "--", "raycut", "toy-data", "--out", "x"],
                cwd=tmp_path, env=head["env"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot reach the Ray job server" in r.stderr
    no_token = {k: v for k, v in head["env"].items() if k != "RAY_AUTH_TOKEN"} | {"HOME": str(tmp_path)}
    r = _raycut(["jobs", "list", "--address", head["address"]], cwd=tmp_path, env=no_token)
    assert r.returncode == 2 and "cannot reach the Ray job server" in r.stderr and "token" in r.stderr.lower()


def test_runtime_env_ships_the_installed_package_and_its_requirements(tmp_path, monkeypatch):
    """From an installed raycut: the requirements are the installed metadata's (no
    pyproject.toml needed), the code goes as py_modules, the current folder is not
    uploaded unless asked; --no-pip ships neither (the node image has both)."""
    import tomllib

    import jobs
    from jobs.submit import SubmitOptions, build_runtime_env, entrypoint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.delenv("RAYCUT_STORAGE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    env = build_runtime_env(SubmitOptions(command=("raycut", "demo")))
    assert "working_dir" not in env
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    def norm(reqs):
        return sorted((r.name, str(r.specifier), tuple(sorted(r.extras))) for r in map(Requirement, reqs))

    assert norm(env["pip"]) == norm(declared)
    assert str(Path(jobs.__file__).parent) in env["py_modules"] and len(env["py_modules"]) == 3
    assert build_runtime_env(SubmitOptions(command=("raycut", "demo"), working_dir=str(tmp_path)))["working_dir"] == \
        str(tmp_path)
    bare = build_runtime_env(SubmitOptions(command=("raycut", "demo"), pip=False))
    assert "pip" not in bare and "py_modules" not in bare
    assert entrypoint(("raycut", "train", "--set", "nce_layers=0,4")) == "python -m jobs.cli train --set nce_layers=0,4"


# ---- the configuration files ------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*.yaml"))


def test_every_cluster_file_parses_with_its_required_keys():
    files = _yaml_files()
    assert {p.name for p in files} >= {"aws.yaml", "gcp.yaml", "raycluster.yaml", "rayjob.yaml"}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        for doc in docs:
            if "kind" in doc:  # KubeRay
                assert doc["apiVersion"] == "ray.io/v1", path
                spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
                assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", path
                assert {g["groupName"] for g in spec["workerGroupSpecs"]} >= {"gpu-workers"}, path
                if doc["kind"] == "RayJob":
                    assert doc["spec"]["entrypoint"].startswith("python -m jobs.cli "), path
            else:  # cluster launcher
                for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                            "head_start_ray_commands", "worker_start_ray_commands"):
                    assert key in doc, (path, key)
                types = doc["available_node_types"]
                assert types[doc["head_node_type"]]["resources"] == {"CPU": 0}, path
                assert {"gpu_worker", "cpu_worker"} <= set(types), path
                assert types["gpu_worker"]["max_workers"] > types["gpu_worker"]["min_workers"], path  # autoscaling
    for name in ("Dockerfile", "env.example"):
        assert (CLUSTER / name).is_file()


def _schema_strict(node):
    """A CRD's OpenAPI v3 schema as a JSON Schema that, like `kubectl apply
    --validate=strict`, rejects fields the CRD does not declare."""
    if isinstance(node, list):
        return [_schema_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _schema_strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _crd_schemas():
    """tests/data/kuberay-crds/vendor.py, which holds KubeRay's CRD schemas for the test
    (a data folder's script, not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("kuberay_crds", TESTS / "data" / "kuberay-crds" / "vendor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str):
    """A validator of the strict v1 schema of a KubeRay CRD, built once per kind:
    ``jsonschema.validate`` checks so large a schema against its metaschema on every
    call (2.3 s)."""
    import jsonschema

    schema = _schema_strict(_crd_schemas().load_vendored(kind))
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="KubeRay's full CRDs sit in ../shared/data/kuberay-crds beside a checkout")
def test_the_vendored_crd_schemas_are_kuberays():
    """What a clean checkout validates against is what KubeRay publishes."""
    crds = _crd_schemas()
    for kind in crds.KINDS:
        assert crds.load_vendored(kind) == crds.v1_schema(crds.crd_file(SHARED_CRDS, kind)), \
            f"{kind}: re-run tests/data/kuberay-crds/vendor.py {SHARED_CRDS}"


def test_kuberay_manifests_validate_strictly_against_the_real_crds():
    import jsonschema

    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            _crd_validator(doc["kind"]).validate(doc)  # raises on an unknown or mistyped field
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            # /dev/shm on every group that runs Ray Data or training (all but the CPU-0 head).
            for group in spec["workerGroupSpecs"]:
                pod = group["template"]["spec"]
                assert any(m["mountPath"] == "/dev/shm" for c in pod["containers"] for m in c.get("volumeMounts", [])), \
                    (path, group["groupName"])
                gpu = "nvidia.com/gpu" in str(pod["containers"][0]["resources"])
                assert pod["containers"][0]["image"].endswith("-gpu" if gpu else "-cpu"), (path, group["groupName"])
    bad = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    bad["spec"]["authOptions"]["tokenFile"] = "/x"  # a field KubeRay does not have
    with pytest.raises(jsonschema.ValidationError):
        _crd_validator("RayCluster").validate(bad)


def test_launcher_configs_validate_against_rays_schema_and_start_gpus_only_where_they_are():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    for path in sorted((CLUSTER / "launcher").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        jsonschema.validate(doc, schema)
        run_options = " ".join(doc["docker"]["run_options"])
        # The container's user is `ray`: the token path is the one the file mount gives it.
        assert "RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in run_options, path
        assert "--gpus" not in run_options and "worker_run_options" not in doc["docker"], path
        types = doc["available_node_types"]
        assert types["gpu_worker"]["docker"]["worker_run_options"] == ["--gpus all"], path
        assert types["gpu_worker"]["docker"]["worker_image"].endswith("-gpu"), path
        assert "docker" not in types["cpu_worker"] and doc["docker"]["image"].endswith("-cpu"), path
        assert "580" in path.read_text(), path  # the driver the CUDA 13.0 build needs is named


def test_node_image_is_rays_own_with_the_pinned_set():
    text = (CLUSTER / "Dockerfile").read_text()
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S*)$", text))
    assert args["RAY_VERSION"] == pins["ray"] and args["PYTHON"] == "py311", args
    assert re.search(r"(?m)^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}\$\{VARIANT\}$", text)
    assert args["VARIANT"] in ("-gpu", "")
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()  # what py311 and the code run
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    assert re.search(r"command -v .*rsync.*ssh.*wget|for tool in rsync ssh wget", text)  # checked at build time
    assert "USER root" not in text  # Ray's image runs as the non-root user ray
    copied = " ".join(re.findall(r"(?m)^COPY .*$", text))
    assert not re.search(r"env|token|secret|\.ray|credentials|\.aws", copied, re.I), copied


def test_cluster_files_are_safe_by_default():
    for path in _yaml_files():
        text = path.read_text()
        for doc in (d for d in yaml.safe_load_all(text) if d):
            if "kind" in doc:
                spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
                head = spec["headGroupSpec"]
                # Inside the pod network only, and behind token authentication on every container.
                assert head.get("serviceType", "ClusterIP") == "ClusterIP", path
                for group in [head, *spec["workerGroupSpecs"]]:
                    for container in group["template"]["spec"]["containers"]:
                        # The token comes from authOptions' Secret, never a literal in a manifest.
                        assert "RAY_AUTH_TOKEN" not in {e["name"] for e in container.get("env", [])}, path
                assert spec["authOptions"] == {"mode": "token", "secretName": "raycut-ray-token"}, path
            else:
                starts = " ".join(doc["head_start_ray_commands"])
                assert "--dashboard-host=127.0.0.1" in starts and "RAY_AUTH_MODE=token" in starts, path
                assert "RAY_AUTH_MODE=token" in " ".join(doc["worker_start_ray_commands"]), path
                assert "security_group" not in str(doc["provider"]).lower() or "8265" not in str(doc["provider"]), path
        # Nothing opens the Ray ports to the world, and no secret value is committed.
        settings = re.sub(r"#.*", "", text)  # what is configured, not what the comments discuss
        assert "LoadBalancer" not in settings and "NodePort" not in settings and "0.0.0.0/0" not in settings, path
        assert not re.search(r"(?i)(password|secret_access_key|auth_token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", text), path
    example = (CLUSTER / "env.example").read_text()
    assert not re.search(r"(?m)^(RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY|MLFLOW_TRACKING_PASSWORD)=\S", example)
