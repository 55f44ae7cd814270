"""MLflow: where runs go, what they record, and the registered model.

The embedded default is a SQLite store ``mlflow.db`` in the working directory with
artifacts in ``./mlruns`` beside it; ``MLFLOW_TRACKING_URI`` points anywhere else (a
tracking server on PostgreSQL + an object store, on a cluster). The driver creates
the experiment and the run; training rank 0 logs into that run by id through an
``MlflowClient``, so no worker depends on MLflow's process-global active run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from cut_core.errors import RaycutError

# MLflow announces every schema set-up of a new SQLite store at INFO, and its check of
# the input example of every model logged; not news to a user.
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.pyfunc"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MODEL_ARTIFACT = "model"  # the logged MLflow model's name in the run
MODEL_DIR_ARTIFACT = "model_dir"  # key of the raycut model directory among its artifacts
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail fast, before any training, when the tracking store cannot be used."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot track"
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RaycutError(
            f"MLflow tracking store {uri} is unreachable ({reason}); start the server or fix "
            "MLFLOW_TRACKING_URI (unset it to use ./mlflow.db)"
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """Create (or reuse) the experiment, start a run with ``params``; returns its id."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            # Artifacts beside the database, as an absolute path: Ray Train workers run
            # in a Ray session folder, where MLflow's relative default would point.
            location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in sorted(params.items())]
    client = _client(uri)
    for i in range(0, len(items), 100):  # the store takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def run_params(uri: str, run_id: str) -> dict[str, str]:
    return dict(_client(uri).get_run(run_id).data.params)


def log_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Tags, unlike params, may change: what a resumed run found on its new machine."""
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())])


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed run as running again (a crash may have left it FAILED)."""
    _client(uri).update_run(run_id, status="RUNNING")


def end_run(uri: str, run_id: str, status: str) -> None:
    _client(uri).set_terminated(run_id, status=status)


class RunLogger:
    """What training rank 0 logs into an existing run: metrics and picture artifacts."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = _client(uri)
        self.run_id = run_id
        self.pending: list[Any] = []

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # Asynchronous: the training step does not wait for the tracking store.
        self.pending.append(self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()],
                                                  synchronous=False))

    def flush(self) -> None:
        """Wait until every metric logged so far is stored."""
        for op in self.pending:
            op.wait()
        self.pending.clear()

    def artifact(self, path: str | Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def image(self, path: str | Path, key: str, step: int) -> None:
        """A picture in MLflow's image view under ``key``, with a step slider."""
        from PIL import Image

        with Image.open(path) as im:
            self.client.log_image(self.run_id, im.convert("RGB"), key=key, step=step)


def log_metrics_now(uri: str, run_id: str, values: Mapping[str, float], *, step: int = 0,
                    artifact: str | Path | None = None, artifact_dir: str | None = None) -> None:
    """Metrics (and one file) into an existing run, synchronously: for one-off reports
    such as ``raycut evaluate``, which may log into a run that has ended."""
    from mlflow.entities import Metric

    client = _client(uri)
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise RaycutError(f"MLflow run {run_id} does not exist at {uri}; check --run-id / MLFLOW_RUN_ID") from None
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(values.items())]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])
    if artifact is not None:
        client.log_artifact(run_id, str(artifact), artifact_path=artifact_dir)


# What a logged model needs to load and run: the versions of this environment, so a
# model served in a year installs the torch it was trained with.
MODEL_REQUIREMENTS = ("torch", "safetensors", "numpy")


def pinned_requirements() -> list[str]:
    """``name==version`` of MODEL_REQUIREMENTS as installed here (torch without a local
    build tag such as +cpu, which a package index does not serve)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def model_signature():
    """uint8 RGB images in, uint8 RGB images of the same size out: (N, H, W, 3), any N, H, W."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    return ModelSignature(inputs=images, outputs=images)


def log_model_dir(uri: str, run_id: str, model_dir: str | Path, *, name: str = MODEL_ARTIFACT,
                  metrics: Mapping[str, float] | None = None) -> str:
    """Log a raycut model directory as an MLflow pyfunc model ("models from code": the
    class is read from jobs/mlflow_model.py, nothing is pickled), with its signature,
    an input example, pinned requirements, and the generator's config and the run's
    key ``metrics`` as model metadata. Returns the model URI."""
    import mlflow
    import numpy as np

    import cut_core

    config = json.loads((Path(model_dir) / "config.json").read_text())
    metadata = {"raycut_model": {k: config.get(k) for k in ("architecture", "model", "normalization", "weights",
                                                            "trained_steps") if config.get(k) is not None},
                "raycut_metrics": dict(metrics or {})}
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id, log_system_metrics=False):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_CODE),
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            # cut_core travels with the model, so it loads without raycut installed.
            code_paths=[str(Path(cut_core.__file__).parent)],
            pip_requirements=pinned_requirements(),
            signature=model_signature(),
            input_example=np.full((1, 8, 8, 3), 128, dtype=np.uint8),
            metadata=metadata,
        )
    return info.model_uri


def register(uri: str, model_uri: str, name: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` under ``name``; returns the new version. ``models:/NAME@latest``
    then resolves to it (``latest`` is MLflow's built-in alias for the newest version;
    other aliases such as ``champion`` are set by the user or by ``raycut tune``)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    return str(mv.version)


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    """Point ``models:/NAME@ALIAS`` at ``version`` (moving it if it pointed elsewhere)."""
    _client(uri).set_registered_model_alias(name, alias, version)


def log_artifact(uri: str, run_id: str, path: str | Path, folder: str | None = None) -> None:
    _client(uri).log_artifact(run_id, str(path), artifact_path=folder)


def log_dict(uri: str, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    """A JSON artifact of the run, written from memory."""
    _client(uri).log_dict(run_id, dict(data), artifact_file)


def resolve_model_dir(model: str, *, uri: str | None = None, cache: str | Path | None = None) -> Path:
    """A local raycut model directory for ``model``: a directory path as is, or an MLflow
    model URI (``models:/NAME@ALIAS``, ``models:/NAME/3``, ``runs:/ID/model``) downloaded."""
    local = Path(model)
    if "://" not in model and not model.startswith(("models:", "runs:")):
        if not (local / "config.json").is_file():
            raise RaycutError(f"{model} is not a raycut model directory (no config.json); pass a model dir or models:/NAME@ALIAS")
        return local
    import mlflow

    mlflow.set_tracking_uri(uri or tracking_uri())
    dst = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="raycut-model-"))
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(dst)))
    except Exception as e:  # noqa: BLE001
        raise RaycutError(f"cannot fetch model {model} from {uri or tracking_uri()} ({str(e).splitlines()[0][:200]}); "
                          "check the name and alias with `mlflow ui` or MlflowClient().search_model_versions()") from None
    # A pyfunc model keeps its artifacts under artifacts/<name>/.
    found = sorted(root.glob("artifacts/*/config.json")) or sorted(root.glob("**/config.json"))
    if not found:
        raise RaycutError(f"{model} holds no raycut model directory; was it logged by `raycut train`?")
    return found[0].parent
