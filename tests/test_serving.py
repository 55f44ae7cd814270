"""A registered raycut model served the MLflow way: `mlflow models serve` (in this
environment, no virtualenv built) answers a REST request with the pixels cut_core
computes; the logged model carries its signature, an input example, pinned
requirements and its config as metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from cut_core import CUTConfig, save_generator
from cut_core.networks import build_generator
from cut_core.translate import translate_uint8
from jobs import tracking
from tests.conftest import free_ports, patience


@pytest.fixture
def registered(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = CUTConfig.tiny("fastcut")
    torch.manual_seed(0)
    G = build_generator(cfg.model).eval()
    model_dir = save_generator(G, tmp_path / "model", model_config=cfg.model, extra={"trained_steps": 7})
    run_id = tracking.create_run(uri, "serving", "serve", {}, {})
    model_uri = tracking.log_model_dir(uri, run_id, model_dir, metrics={"step": 7.0, "NCE": 1.5})
    tracking.end_run(uri, run_id, "FINISHED")
    tracking.register(uri, model_uri, "toy-served", {})
    return uri, G, model_uri


def test_logged_model_has_signature_example_pins_and_metadata(registered):
    info = mlflow.models.get_model_info("models:/toy-served@latest")
    inputs = info.signature.inputs.to_dict()[0]
    assert inputs["tensor-spec"]["dtype"] == "uint8" and list(inputs["tensor-spec"]["shape"]) == [-1, -1, -1, 3]
    assert info.saved_input_example_info is not None
    assert info.metadata["raycut_model"]["trained_steps"] == 7
    assert info.metadata["raycut_metrics"] == {"step": 7.0, "NCE": 1.5}
    reqs = Path(mlflow.pyfunc.get_model_dependencies("models:/toy-served@latest")).read_text().split()
    assert f"torch=={version('torch').split('+')[0]}" in reqs and f"numpy=={version('numpy')}" in reqs


def test_pyfunc_takes_any_integer_dtype_and_refuses_bad_pixels(registered):
    _, G, _ = registered
    model = mlflow.pyfunc.load_model("models:/toy-served@latest")
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3))
    want = translate_uint8(G, x.astype(np.uint8))
    np.testing.assert_array_equal(model.unwrap_python_model().predict(None, x.astype(np.int64)), want)
    np.testing.assert_array_equal(model.predict(x.astype(np.uint8)), want)
    with pytest.raises(ValueError, match="0..255"):
        model.unwrap_python_model().predict(None, x.astype(np.int64) + 300)


def test_pyfunc_translates_a_ragged_batch_each_image_at_its_own_size(registered):
    _, G, _ = registered
    model = mlflow.pyfunc.load_model("models:/toy-served@latest")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((32, 48), (40, 24), (32, 48))]
    want = [translate_uint8(G, im[None])[0] for im in images]
    ragged = np.empty(len(images), dtype=object)  # MLflow's form of a ragged batch
    ragged[:] = images
    for given in (ragged, [im.astype(np.int32) for im in images]):
        got = model.predict(given) if given is ragged else model.unwrap_python_model().predict(None, given)
        assert [g.shape for g in got] == [im.shape for im in images]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="image 1: expected an RGB image"):
        model.unwrap_python_model().predict(None, [images[0], images[1][..., :2]])


def test_mlflow_models_serve_answers_a_rest_request(registered, tmp_path):
    uri, G, _ = registered
    (port,) = free_ports(1)
    # The server runs `uvicorn` from PATH: this environment's, as in an activated venv.
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = str(bin_dir / "mlflow")
    server = subprocess.Popen([mlflow_cli, "models", "serve", "-m", "models:/toy-served@latest", "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.time() + patience(300)  # generous: the suite runs two workers on 2 cores
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the server did not start: {server.stdout.read().decode()[-3000:]}")
            time.sleep(0.5)
        image = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
        body = json.dumps({"inputs": image.tolist()}).encode()  # JSON ints, as curl sends them
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=patience(60)) as r:
            got = np.asarray(json.loads(r.read())["predictions"])
        np.testing.assert_array_equal(got, translate_uint8(G, image))
    finally:
        server.terminate()
        try:
            server.wait(timeout=patience(20))
        except subprocess.TimeoutExpired:
            server.kill()
