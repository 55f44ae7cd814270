"""cut_core.allocator: with glibc's malloc tuned, freed tensors are reused instead of
mapped and zeroed again by the kernel, which page faults count. Each check runs in a
fresh interpreter: the setting is process-wide and must not leak into the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import patience

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
pytestmark = pytest.mark.skipif(not GLIBC, reason="the tuning applies to glibc's malloc only")

# Allocate, touch and free two 40 MB tensors (above glibc's largest mmap threshold, as a
# 256 px step's activations are) 16 times in a thread started after the setting (Ray
# Train runs its loop in one), appending each round's page faults to `out`.
ROUNDS = r"""
import resource, threading, torch

def rounds(out, n=16):
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(10 * 2**20); y = x * 2; del x, y
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

def in_a_thread(n=16):
    out = []
    t = threading.Thread(target=rounds, args=(out, n)); t.start(); t.join()
    return out
"""
PAGES = 2 * 40 * 2**20 // 4096  # a round's two tensors, in 4 KiB pages
# The same in the main thread and then in a later thread; `tune` calls cut_core.allocator first.
FAULTS = ROUNDS + r"""
import json, sys
from cut_core.allocator import keep_freed_memory
status = keep_freed_memory() if sys.argv[1] == "tune" else "untouched"
main = []
rounds(main)
print(json.dumps({"status": status, "main": main, "thread": in_a_thread()}))
"""


def settled(faults: list[int]) -> bool:
    """The heap grows for a few rounds (torch's aligned blocks leave small pieces between
    the freed ones, so a freed block is not always where the next one fits), then its
    freed blocks serve the rounds: over the last six, at most one round's worth of new
    pages (seen: none)."""
    return sum(faults[-6:]) <= PAGES


def _faults(mode: str, **env: str) -> dict:
    r = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=ROOT, capture_output=True, text=True, timeout=patience(120),
                       env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_freed_tensors_are_reused_in_the_main_thread_and_in_later_threads():
    plain = _faults("plain")
    # glibc as it comes: every round maps and zeroes both tensors again.
    assert min(plain["main"] + plain["thread"]) > 0.9 * PAGES, plain
    tuned = _faults("tune")
    assert tuned["status"] == "glibc: freed memory kept for reuse (mmap off, trim off, one arena)"
    assert settled(tuned["main"]) and settled(tuned["thread"]), tuned
    assert sum(tuned["main"] + tuned["thread"]) < 0.5 * sum(plain["main"] + plain["thread"]), (tuned, plain)
    # The opt-out leaves malloc as it is, and says so.
    opted = _faults("tune", RAYCUT_MALLOC="default")
    assert opted["status"] == "glibc default (RAYCUT_MALLOC=default)"
    assert min(opted["main"] + opted["thread"]) > 0.9 * PAGES, opted


def mostly_reused(faults: list[int]) -> bool:
    """At least half the rounds map (almost) no new pages. In a Ray worker, Ray's own
    threads allocate from the same single arena between the rounds' blocks, so the heap
    grows for more rounds than in a plain process before it serves them all: seen up to
    9 of 16 (2026-12-03, the AVX2-only EPYC), then none."""
    return sum(f < PAGES // 100 for f in faults) >= len(faults) / 2


@pytest.mark.cost(60)
def test_raycuts_compute_workers_start_with_the_settings_and_rays_own_do_not(tmp_path):
    """On raycut's Ray (jobs.ray_runtime.start_ray), an actor started with
    ``compute_runtime_env`` (as Ray Train's workers and the translation actors are)
    has the settings as glibc's environment variables, and its thread reuses freed
    tensors; any other worker (Ray's own, Ray Data's decode and IO) keeps glibc's
    malloc as it comes, and maps every round anew."""
    script = ROUNDS + r"""
import json, os
import ray
from jobs.ray_runtime import compute_runtime_env, start_ray
start_ray(1)

@ray.remote(num_cpus=0)
class Worker:
    def faults(self):
        return {"env": os.environ.get("MALLOC_ARENA_MAX"), "thread": in_a_thread(32)}

compute = Worker.options(runtime_env=compute_runtime_env()).remote()
print(json.dumps({"compute": ray.get(compute.faults.remote()), "other": ray.get(Worker.remote().faults.remote())}))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=patience(300),
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    compute, other = got["compute"], got["other"]
    assert compute["env"] == "1" and mostly_reused(compute["thread"]), compute["thread"]
    assert other["env"] is None and min(other["thread"]) > 0.9 * PAGES, other["thread"]


def test_the_compute_env_carries_the_settings_or_the_opt_out(monkeypatch):
    """What Ray Train's workers and the translation actors are started with: glibc's
    variables, or, where the driver opted out, the opt-out itself (a cluster's nodes do
    not see the driver's environment)."""
    from jobs.ray_runtime import compute_runtime_env

    monkeypatch.delenv("RAYCUT_MALLOC", raising=False)
    tuned = compute_runtime_env()["env_vars"]
    assert tuned["MALLOC_ARENA_MAX"] == "1" and tuned["MALLOC_MMAP_MAX_"] == "0" and "RAYCUT_MALLOC" not in tuned
    monkeypatch.setenv("RAYCUT_MALLOC", "default")
    assert compute_runtime_env() == {"env_vars": {"RAYCUT_MALLOC": "default"}}


def test_the_translation_bench_times_glibc_malloc_in_a_process_of_its_own(tmp_path):
    """`python -m jobs.bench.device --crops --translate HxW --translate-variants fp32
    fp32-glibc-malloc`: the plain row in the bench's process, tuned as translation
    tunes it; the other in a fresh process that leaves malloc alone."""
    out = tmp_path / "record.json"
    r = subprocess.run([sys.executable, "-m", "jobs.bench.device", "--crops", "--translate", "64x96", "--translate-variants",
                        "fp32", "fp32-glibc-malloc", "--iters", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=patience(300), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {row["name"]: row for row in record["results"] if row["metric"] == "images_per_s"}
    assert set(rows) == {"translate/fp32@64x96", "translate/fp32-glibc-malloc@64x96"}
    assert all(row["value"] > 0 for row in rows.values())
    assert rows["translate/fp32@64x96"]["malloc"].startswith("glibc: freed memory kept")
    assert rows["translate/fp32-glibc-malloc@64x96"]["malloc"].startswith("glibc as it comes")
