"""`raycut submit` and `raycut jobs`: any raycut command as a Ray job on a cluster.

    raycut submit [--address URL] [--runtime-env Y] [--no-wait] [--no-pip] -- raycut train ...
      -> Ray Job Submission API: entrypoint `python -m jobs.cli train ...`; raycut's
         code as packages (Ray's py_modules, from wherever raycut is installed: a
         checkout or a wheel) and its requirements from the installed package's
         metadata, or neither with --no-pip (the node image has both);
         MLFLOW_TRACKING_URI / RAYCUT_STORAGE_PATH forwarded
      -> job id; then, as `ray job submit` does, the logs stream here (reconnecting
         if the stream drops while the job runs) and the exit code is the job's;
         --no-wait returns at once

The address is --address, else $RAY_ADDRESS, else http://127.0.0.1:8265 (a tunnel or
port-forward to the head: the job server is never exposed). With token
authentication (RAY_AUTH_MODE=token) Ray's client sends the token from $RAY_AUTH_TOKEN
or ~/.ray/auth_token.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cut_core.errors import RaycutError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Forwarded into every job when set here: where it tracks and where it checkpoints.
# Credentials are not forwarded unless named with --env (they would show in the
# job's runtime environment on the dashboard).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "RAYCUT_STORAGE_PATH", "RAYCUT_MALLOC")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
TAIL_LINES = 20


@dataclass(frozen=True)
class SubmitOptions:
    command: tuple[str, ...]
    address: str | None = None
    runtime_env: str | None = None  # YAML merged over raycut's runtime env
    wait: bool = True
    pip: bool = True  # ship raycut's code and requirements with the job (off for raycut's image)
    env: tuple[str, ...] = ()  # more variables to forward by name
    working_dir: str | None = None  # also upload this folder as the job's working directory


def resolve_address(address: str | None) -> str:
    addr = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if addr.startswith("ray://") or (":" in addr and "://" not in addr and addr.rsplit(":", 1)[1] == "6379"):
        raise RaycutError(f"{addr} is a Ray client/GCS address; raycut submit talks to the job server: "
                          f"--address http://HEAD:8265 (through a tunnel: {DEFAULT_ADDRESS})")
    return addr if "://" in addr else f"http://{addr}"


def connect(address: str | None):
    """A JobSubmissionClient, or one line that says how to reach the job server."""
    import logging

    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed ..."

    addr = resolve_address(address)
    try:
        return JobSubmissionClient(addr)
    except Exception as e:  # noqa: BLE001 - connection refused, timeout, auth: one message each
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = ("set RAY_AUTH_TOKEN or run `ray get-auth-token` (token authentication is on)"
                if "auth" in reason.lower() or "401" in reason or "403" in reason else
                "start a tunnel (`ray dashboard cluster/launcher/aws.yaml` or `kubectl port-forward "
                "svc/raycut-head-svc 8265:8265`) or pass --address / set RAY_ADDRESS")
        raise RaycutError(f"cannot reach the Ray job server at {addr} ({reason}); {hint}") from None


def entrypoint(command: tuple[str, ...]) -> str:
    """``raycut train ...`` -> ``python -m jobs.cli train ...`` (works with raycut
    installed on the cluster or only uploaded as the working directory)."""
    if not command:
        raise RaycutError("nothing to submit: raycut submit [options] -- raycut COMMAND ...")
    args = list(command)
    if args[0] == "raycut":
        return "python -m jobs.cli " + shlex.join(args[1:])
    return shlex.join(args)


PACKAGES = ("cut_core", "pipelines", "jobs")  # raycut's import packages: its code, as py_modules


def package_requirements() -> list[str]:
    """raycut's runtime requirements, from the installed package's metadata (a wheel
    install has no pyproject.toml); extras such as ``test`` are left out."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("raycut") or []
    except PackageNotFoundError:
        raise RaycutError("raycut is not installed in this environment (pip install raycut, or pip install -e . in "
                          "a checkout); submit reads its requirements from the installed package") from None
    return [r for r in reqs if "extra ==" not in r.replace('"', "").replace("'", "")]


def package_dirs() -> list[str]:
    """The folders of raycut's packages as this interpreter imports them."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in PACKAGES]


def build_runtime_env(opts: SubmitOptions) -> dict[str, Any]:
    env_vars = {k: os.environ[k] for k in (*FORWARDED_ENV, *opts.env) if os.environ.get(k)}
    missing = [k for k in opts.env if not os.environ.get(k)]
    if missing:
        raise RaycutError(f"--env {missing[0]} is not set in this shell; export it or drop --env {missing[0]}")
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if opts.working_dir:
        runtime_env["working_dir"] = str(Path(opts.working_dir).resolve())
    if opts.pip:
        runtime_env["pip"] = package_requirements()
        runtime_env["py_modules"] = package_dirs()
    if opts.runtime_env:
        import yaml

        p = Path(opts.runtime_env)
        if not p.is_file():
            raise RaycutError(f"--runtime-env {p} does not exist")
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise RaycutError(f"--runtime-env {p} must be a mapping (working_dir, pip, env_vars, ...)")
        runtime_env["env_vars"] = {**env_vars, **(user.pop("env_vars", None) or {})}
        runtime_env.update(user)
    return runtime_env


def submit(opts: SubmitOptions) -> int:
    entry = entrypoint(opts.command)
    runtime_env = build_runtime_env(opts)
    client = connect(opts.address)
    try:
        job_id = client.submit_job(entrypoint=entry, runtime_env=runtime_env, metadata={"submitted_by": "raycut"})
    except Exception as e:  # noqa: BLE001
        raise RaycutError(f"the job server refused the job ({(str(e).splitlines() or [''])[0][:300]})") from None
    addr = resolve_address(opts.address)
    print(f"[submit] job {job_id} submitted to {addr}: {entry}", flush=True)
    if not opts.wait:
        print(f"[submit] follow it: raycut jobs logs {job_id} --follow   (status: raycut jobs status {job_id})", flush=True)
        return 0
    return follow(client, job_id)


RECONNECT_S = 2.0


def follow(client: Any, job_id: str) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded, else 1 with its last lines.
    A stream that drops while the job still runs is opened again (each new stream
    starts from the job's first line: what was printed already is skipped)."""
    import asyncio
    import signal
    import threading

    printed = 0
    interrupted = False

    # Ctrl-C is caught here, not by asyncio's own handler. That one only cancels the
    # stream's task, and a cancel can be lost: when the task has just ended, or when the
    # client's cleanup raises an error of its own, which reads below as a dropped stream.
    # Once, on a loaded machine (2026-12-07), a watch went on until its job ended after a
    # Ctrl-C. asyncio.Runner keeps a handler that is set already; this one raises at once
    # and leaves a mark that the "dropped stream" branch reads.
    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    def quiet_after_ctrl_c(loop: Any, context: dict) -> None:
        # The stream's own teardown error, after a Ctrl-C, is no news to the user.
        if not interrupted:
            loop.default_exception_handler(context)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None

    async def tail() -> None:
        nonlocal printed
        seen = 0
        async for chunk in client.tail_job_logs(job_id):
            new = chunk[max(0, printed - seen):]
            seen += len(chunk)
            if new:
                print(new, end="", flush=True)
                printed += len(new)

    try:
        while True:
            try:
                with asyncio.Runner() as runner:
                    runner.get_loop().set_exception_handler(quiet_after_ctrl_c)
                    runner.run(tail())
            except Exception:  # noqa: BLE001 - a dropped stream; the status decides what comes next
                if interrupted:  # an error raised while the stream was torn down by Ctrl-C
                    raise KeyboardInterrupt from None
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL:
                break
            print(f"[submit] log stream of {job_id} dropped while it is {status}; reconnecting", flush=True)
            time.sleep(RECONNECT_S)
    except KeyboardInterrupt:
        # Ctrl-C stops the watching, not the job: say so, and how to watch or stop it.
        raise KeyboardInterrupt(f"job {job_id} goes on running on the cluster: `raycut jobs logs {job_id} --follow` "
                                f"watches it again, `raycut jobs stop {job_id}` stops it") from None
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGINT, previous)
    if status == "SUCCEEDED":
        print(f"[submit] job {job_id} SUCCEEDED", flush=True)
        return 0
    info = client.get_job_info(job_id)
    last = client.get_job_logs(job_id).rstrip().splitlines()[-TAIL_LINES:]
    reason = (info.message or "").strip().splitlines()[:1]  # its first line; the log tail follows
    print(f"[submit] job {job_id} {status}" + (f": {reason[0]}" if reason else ""), flush=True)
    print("\n".join(f"  | {line}" for line in last), flush=True)
    return 1


def jobs_command(action: str, job_id: str | None, address: str | None, follow_logs: bool = False) -> int:
    client = connect(address)
    if action == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
        print(f"{'job id':<28} {'status':<10} {'started':<20} entrypoint")
        for j in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
            print(f"{(j.submission_id or j.job_id or ''):<28} {str(j.status.value):<10} {started:<20} {j.entrypoint[:80]}")
        return 0
    if not job_id:
        raise RaycutError(f"raycut jobs {action} needs a job id (see raycut jobs list)")
    try:
        if action == "status":
            info = client.get_job_info(job_id)
            print(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
            return 0 if str(info.status.value) != "FAILED" else 1
        if action == "logs":
            if follow_logs:
                return follow(client, job_id)
            print(client.get_job_logs(job_id), end="")
            return 0
        if action == "stop":
            stopped = client.stop_job(job_id)
            print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
            return 0
    except RuntimeError as e:  # the SDK's "job does not exist" and friends
        raise RaycutError(f"{(str(e).splitlines() or [''])[0][:200]}; see raycut jobs list") from None
    raise RaycutError(f"unknown jobs action {action}")
