"""launch/torchrun.sh: usage, argument checks, and SIGUSR1 -> checkpoint + exit 0 on 2 gloo ranks;
SIGTERM to the whole process group after periodic saves -> saved at the iteration reached, exit 0."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.launch.helpers import (
    TORCHRUN_SH,
    TRAIN_SBATCH,
    assert_contiguous_finite,
    descendants,
    latest_checkpoint,
    processes_in_group,
    read_metrics,
    subprocess_env,
    tail,
    tiny_overrides,
    tmp_checkpoints,
    wait_for_iteration,
    wait_for_line,
)


def test_help():
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: launch/torchrun.sh [NPROC]")
    for word in ("NPROC", "OMP_NUM_THREADS", "SIGUSR1", "RDZV_ENDPOINT"):
        assert word in proc.stdout


def test_scripts_parse():
    for script in (TORCHRUN_SH, TRAIN_SBATCH):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_sbatch_script_outside_slurm_says_how_to_submit():
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(TRAIN_SBATCH), "experiment=demo"], capture_output=True, text=True,
                          timeout=30, env=env)
    assert proc.returncode == 2
    assert "submit with sbatch" in proc.stderr


def test_rejects_bad_nproc():
    proc = subprocess.run(["bash", str(TORCHRUN_SH), "experiment=demo"], capture_output=True, text=True,
                          timeout=30, env=subprocess_env(NPROC="two"))
    assert proc.returncode == 2
    assert "NPROC must be a positive integer, got 'two'" in proc.stderr


@pytest.mark.slow
@pytest.mark.multirank
def test_two_ranks_sigusr1_saves_and_exits_zero(tmp_path, demo_cache):
    """The signal reaches both ranks through the script; they save, and the script exits 0."""
    run_dir = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    cmd = ["bash", str(TORCHRUN_SH), "2", *tiny_overrides(demo_cache, **{
        "parallel.tp": 2, "train.iters": 200, "train.save_interval": 100, "run.dir": run_dir})]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
    try:
        wait_for_line(log, "iter ", timeout=240, proc=proc)
        proc.send_signal(signal.SIGUSR1)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = tail(log)
    assert rc == 0, text
    assert "torchrun.sh: SIGUSR1 -> workers" in text
    assert "preemption signal received" in text
    saved = latest_checkpoint(run_dir)
    assert 1 <= saved < 200, text
    iterations = [m["iteration"] for m in read_metrics(run_dir)]
    assert iterations == list(range(1, saved + 1))


def _alive(pgid: int, pids: list[int]) -> list[str]:
    """Live processes of the group, or of the given pids (zombies count as gone)."""
    found = set(processes_in_group(pgid))
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rfind(")") + 2:].split()[0] != "Z":
                found.add(f"{pid} {stat[stat.find('(') + 1:stat.rfind(')')]}")
    return sorted(found)


@pytest.mark.slow
@pytest.mark.multirank
def test_sigterm_to_process_group_after_periodic_saves(tmp_path, demo_cache):
    """kill -TERM -- -PGID after the run has saved before; the ranks and their helper processes
    (torchrun starts each rank in a session of its own) get the signal too, as SLURM delivers it to
    every process of a job step: it saves at the iteration reached, leaves no .tmp and every process
    exits, the script with 0, within 60 s."""
    run_dir = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    # wandb offline (the default): its service process gets the signal too.
    cmd = ["bash", str(TORCHRUN_SH), "2", *tiny_overrides(demo_cache, **{
        "parallel.tp": 2, "train.iters": 200, "train.save_interval": 2, "run.dir": run_dir,
        "run.wandb_mode": "offline"})]
    env = {k: v for k, v in subprocess_env().items() if k != "WANDB_MODE"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    try:
        reached = wait_for_iteration(log, 5, timeout=240, proc=proc)  # periodic saves at 2 and 4 done
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        start = time.monotonic()
        rc = proc.wait(timeout=60)
        exit_s = time.monotonic() - start
        deadline = time.monotonic() + 10
        while _alive(proc.pid, tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(proc.pid, tree)
    finally:
        for pid in _alive(proc.pid, tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.split()[0]), signal.SIGKILL)
    text = tail(log, 8000)
    print(f"process group exited {exit_s:.1f} s after SIGTERM (iteration {reached} reached)")
    assert rc == 0, text
    assert not left, f"processes left in the group: {left}\n{text}"
    assert "preemption signal received" in text and "BrokenPipeError" not in text, text
    saved = latest_checkpoint(run_dir)
    assert saved >= reached, (saved, reached, text)
    assert tmp_checkpoints(run_dir) == [], text
    assert_contiguous_finite(read_metrics(run_dir), saved)
