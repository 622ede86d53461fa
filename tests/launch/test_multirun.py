"""Hydra multirun sweeps: two jobs in one process (world size 1, no torchrun), each in its own run dir;
and the SLURM launcher config (hydra-submitit-launcher) composes with the trainer's config."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.launch.helpers import latest_checkpoint, read_metrics, subprocess_env, tiny_overrides


@pytest.mark.slow
def test_local_sweep_runs_each_job_in_its_own_run_dir(tmp_path, demo_cache):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nvlm_train.cli.train", "-m",
           *tiny_overrides(demo_cache, **{"train.iters": 2, "train.save_interval": 2}),
           f"hydra.sweep.dir={sweep}", "run.dir=${hydra:runtime.output_dir}", "optimizer.lr=1e-3,4e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    lrs = {}
    for num, lr in ((0, 1e-3), (1, 4e-3)):
        run_dir = sweep / str(num)
        assert latest_checkpoint(run_dir) == 2
        metrics = read_metrics(run_dir)
        assert [m["iteration"] for m in metrics] == [1, 2]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["run"]["dir"] == str(run_dir)
        assert config["optimizer"]["lr"] == lr
        lrs[num] = metrics[0]["lr"]
    # Warm-up of one step: the first step runs at each job's own peak LR.
    assert lrs == {0: pytest.approx(1e-3), 1: pytest.approx(4e-3)}
    # Both jobs started from scratch (neither resumed the other's checkpoints).
    assert proc.stderr.count("from iteration 0 to 2") == 2
    assert "resumed from" not in proc.stderr


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)")
    cmd = [sys.executable, "-m", "nvlm_train.cli.train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
           "--cfg", "all", "--resolve"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu"
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8
    # The trainer saves on SIGUSR1: the job must ask SLURM for that signal, not submitit's SIGUSR2.
    assert launcher["additional_parameters"]["signal"] == f"USR1@{launcher['signal_delay_s']}"
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in launcher["setup"]
    assert "export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK > 0 ? SLURM_CPUS_PER_TASK : 1 ))" in launcher["setup"]
