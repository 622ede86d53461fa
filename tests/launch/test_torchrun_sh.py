"""launch/torchrun.sh: usage, argument checks, and SIGUSR1 -> checkpoint + exit 0 on 2 gloo ranks."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.launch.helpers import (
    TORCHRUN_SH,
    TRAIN_SBATCH,
    latest_checkpoint,
    read_metrics,
    subprocess_env,
    tail,
    tiny_overrides,
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
