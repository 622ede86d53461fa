"""A REAL one-node SLURM cluster on localhost (Debian's slurm-wlm + munge, installed with apt when
missing; munged, slurmctld and slurmd started here as root) runs the launchers:

* ``launch/slurm/train.sbatch``: a 2-rank CPU run (srun -> torchrun.sh -> torchrun, c10d rendezvous)
  that gets the time-limit signal (SIGUSR1 to the batch shell, as ``--signal=B:USR1@...`` sends it)
  mid-run: the ranks save, the script requeues the job, the requeued job resumes from the
  checkpoint and finishes; checkpoint, metrics and the per-job log are checked.
* ``hydra/launcher=slurm``: a two-job Hydra sweep submitted through hydra-submitit-launcher, each
  job 2 SLURM tasks (TP2) that find each other from SLURM's environment alone (no torchrun).

Without apt (or root) the set-up fails with a message saying what to install; it never skips.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.launch.helpers import (
    REPO,
    TRAIN_SBATCH,
    latest_checkpoint,
    read_metrics,
    subprocess_env,
    tail,
    tiny_overrides,
    wait_for_line,
)
from tests.launch.slurm_cluster import LocalSlurm, _free_port, ensure_installed

pytestmark = [pytest.mark.slow, pytest.mark.multirank, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    start = time.monotonic()
    install_s = ensure_installed(log=lambda msg: print(msg, file=sys.stderr))
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        print(f"SLURM cluster up in {time.monotonic() - start:.1f} s (apt install {install_s:.1f} s)",
              file=sys.stderr)
        yield cluster
    finally:
        cluster.stop()


def _env(slurm: LocalSlurm, **extra: str) -> dict[str, str]:
    """Environment of sbatch and the sweep: the cluster's config and PATH, this interpreter."""
    return subprocess_env(SLURM_CONF=slurm.env["SLURM_CONF"], PATH=slurm.env["PATH"], **extra)


def test_sbatch_two_rank_run_requeues_on_time_limit_signal_and_resumes(slurm, tmp_path, demo_cache):
    work = tmp_path / "job"
    (work / "logs").mkdir(parents=True)
    run_dir = work / "run"
    iters = 10
    env = _env(slurm, NPROC_PER_NODE="2", RDZV_PORT=str(_free_port()))
    overrides = tiny_overrides(demo_cache, **{"parallel.tp": 2, "train.iters": iters,
                                             "train.save_interval": 100, "run.dir": run_dir})
    proc = subprocess.run(["sbatch", "--parsable", f"--chdir={work}", str(TRAIN_SBATCH), *overrides],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + slurm.logs_tail()
    job = int(proc.stdout.strip().split(";")[0])
    log = work / "logs" / f"nvlm-train-{job}.out"  # --output=logs/%x-%j.out

    # Training has started (first console line): send what --signal=B:USR1@180 sends before the limit.
    wait_for_line(log, "iter ", timeout=300)
    slurm.run("scancel", "--batch", "--signal=USR1", str(job))

    state = slurm.wait_job(job, timeout=420)
    text = log.read_text(errors="replace")
    assert state == "COMPLETED", f"job {job} ended {state}:\n{tail(log, 8000)}\n{slurm.logs_tail()}"
    assert slurm.job_state(job)[2] == 1, f"expected one requeue:\n{text[-6000:]}"

    # First run: the signal reached the ranks, which saved and stopped before the end.
    assert "SIGUSR1 (time limit near)" in text
    assert "torchrun.sh: SIGUSR1 -> workers" in text
    assert "preemption signal received" in text
    assert f"requeueing job {job}" in text
    # Second run: same job, same overrides, resumed from that checkpoint and finished.
    assert f"job {job} (restart 1): 1 node(s) x 2 rank(s)" in text
    resumed = [line for line in text.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, text[-6000:]
    stopped_at = int(resumed[0].rsplit(" ", 1)[1])
    assert 1 <= stopped_at < iters
    assert f"from iteration {stopped_at} to {iters}" in text
    assert text.count("training step finished with status 0") == 2

    assert latest_checkpoint(run_dir) == iters
    assert (run_dir / "checkpoints" / f"iter_{stopped_at:07d}").is_dir()
    metrics = read_metrics(run_dir)
    assert [m["iteration"] for m in metrics] == list(range(1, iters + 1))
    assert all(m["loss"] == m["loss"] and m["loss"] > 0 for m in metrics)  # finite
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["parallel"]["tp"] == 2 and config["train"]["iters"] == iters


def test_hydra_submitit_sweep_on_slurm(slurm, tmp_path, demo_cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nvlm_train.train", "-m",
           "hydra/launcher=slurm", f"hydra.launcher.partition={slurm.partition}",
           "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=null",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
           *tiny_overrides(demo_cache, **{"parallel.tp": 2, "train.iters": 2, "train.save_interval": 2}),
           f"hydra.sweep.dir={sweep}", "run.dir=${hydra:runtime.output_dir}", "optimizer.lr=1e-3,4e-3"]
    env = _env(slurm)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:] + slurm.logs_tail()

    submission = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR1@180" in submission
    assert "export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK > 0 ? SLURM_CPUS_PER_TASK : 1 ))" in submission
    assert "#SBATCH --ntasks-per-node=2" in submission
    for num, lr in ((0, 1e-3), (1, 4e-3)):
        run_dir = sweep / str(num)
        assert latest_checkpoint(run_dir) == 2
        metrics = read_metrics(run_dir)
        assert [m["iteration"] for m in metrics] == [1, 2]
        assert metrics[0]["lr"] == pytest.approx(lr)
        # The job ran under SLURM: its log is in the submitit folder of a SLURM array task.
        logs = list((sweep / ".submitit").glob(f"*_{num}/*_{num}_0_log.out"))
        assert logs, sorted(str(p) for p in (sweep / ".submitit").rglob("*"))
        text = logs[0].read_text(errors="replace")
        assert "global_rank=0(2)" in text and "TP2" in text and "from iteration 0 to 2" in text, text[-4000:]
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["parallel"]["tp"] == 2
