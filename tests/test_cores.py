"""The cores raycut sizes its defaults by: affinity, a cgroup's quota, OMP_NUM_THREADS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cut_core.cores import cgroup_cpu_quota, threads_per_worker, usable_cores


def test_a_cgroup_v2_quota_counts_in_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # docker run --cpus 2.5
    assert cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no limit
    assert cgroup_cpu_quota(tmp_path) is None


def test_a_cgroup_v1_quota_counts_in_cores(tmp_path):
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert cgroup_cpu_quota(tmp_path) is None
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert cgroup_cpu_quota(tmp_path / "absent") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_process_pinned_to_one_cpu_sizes_its_workers_by_it():
    """A real affinity mask (what taskset and a container's cpuset set): one CPU,
    whatever the host has; a 1-worker `raycut train` then runs one thread."""
    code = ("import json, os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "os.environ.pop('OMP_NUM_THREADS', None); "
            "from cut_core.cores import usable_cores, threads_per_worker; "
            "from jobs.train.driver import default_cpus_per_worker; from jobs.train.spec import TrainOptions; "
            "print(json.dumps([usable_cores(), threads_per_worker(1), "
            "default_cpus_per_worker(TrainOptions(data_a='a', data_b='b', workers=1))]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [1, 1, 1.0]


def test_omp_num_threads_caps_each_workers_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = usable_cores()
    assert threads_per_worker(1) == cores and threads_per_worker(2 * cores) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # a cap, not a request: never more than the cores
    assert threads_per_worker(1) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # unreadable: ignored, as torch's own default
    assert threads_per_worker(1) == cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs to pin to one")
def test_raycut_env_says_how_many_cores_are_usable_here():
    one = {min(os.sched_getaffinity(0))}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "env", "--no-probe"], capture_output=True, text=True,
                       timeout=120, env=env, preexec_fn=lambda: os.sched_setaffinity(0, one))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("cores"))
    assert f"{os.cpu_count()} logical, 1 of them usable here" in line and "torch uses 1 thread here" in line, line


def test_a_cgroup_file_that_is_not_numbers_is_no_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_quota(tmp_path) is None
