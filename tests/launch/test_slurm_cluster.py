"""A REAL one-node SLURM cluster on localhost (Debian's slurm-wlm + munge, installed with apt when
missing; munged, slurmctld and slurmd started here as root) runs the launchers:

* ``launch/slurm/train.sbatch``: a 2-rank CPU run (srun -> torchrun.sh -> torchrun, c10d rendezvous)
  that has saved periodically, then is stopped each way a cluster stops a job: ``scancel
  --signal=TERM`` (the steps), ``scancel --batch --signal=USR1`` (what ``--signal=B:USR1@N`` sends
  before the time limit), ``scontrol requeue``, a job in a higher-priority partition (preemption with
  ``PreemptMode=REQUEUE``) and a plain ``scancel``. Each time the ranks save at the iteration they
  reached, no ``.tmp`` is left, no process of the job survives it; the job is requeued and finishes
  (COMPLETED) or, for the plain scancel, ends CANCELLED; losses are finite and logged once per
  iteration across the resume.
* ``hydra/launcher=slurm``: a two-job Hydra sweep submitted through hydra-submitit-launcher, each
  job 2 SLURM tasks (TP2) that find each other from SLURM's environment alone (no torchrun).

Without apt (or root) the set-up fails with a message saying what to install; it never skips.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml

from tests.launch.helpers import (
    REPO,
    TRAIN_SBATCH,
    assert_contiguous_finite,
    latest_checkpoint,
    read_metrics,
    subprocess_env,
    tail,
    tiny_overrides,
    tmp_checkpoints,
    wait_for_iteration,
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


ITERS = 8
# How each scenario stops the job, and what the job must end as: (final state, restarts).
STOPS = {
    "scancel_signal_term": (["scancel", "--signal=TERM", "{job}"], "COMPLETED", 1),
    "scancel_batch_usr1": (["scancel", "--batch", "--signal=USR1", "{job}"], "COMPLETED", 1),
    "scontrol_requeue": (["scontrol", "requeue", "{job}"], "COMPLETED", 1),
    "preemption": (["sbatch", "--parsable", "--partition={urgent}", "--exclusive", "--output=/dev/null",
                    "--wrap=sleep 1"], "COMPLETED", 1),
    "scancel": (["scancel", "{job}"], "CANCELLED", 0),
}


def _clock(log_text: str, marker: str) -> float | None:
    """Seconds of the day of the first train.sbatch log line containing ``marker``."""
    for line in log_text.splitlines():
        m = re.match(r"\[train\.sbatch (\d\d):(\d\d):(\d\d)\] ", line)
        if m and marker in line:
            h, mi, sec = map(int, m.groups())
            return h * 3600 + mi * 60 + sec
    return None


@pytest.mark.parametrize("how", list(STOPS))
def test_sbatch_run_saves_where_the_signal_found_it(slurm, tmp_path, demo_cache, how):
    command, final_state, restarts = STOPS[how]
    work = tmp_path / "job"
    (work / "logs").mkdir(parents=True)
    run_dir = work / "run"
    env = _env(slurm, NPROC_PER_NODE="2", RDZV_PORT=str(_free_port()))
    overrides = tiny_overrides(demo_cache, **{"parallel.tp": 2, "train.iters": ITERS, "train.save_interval": 2,
                                             "run.dir": run_dir})
    proc = subprocess.run(["sbatch", "--parsable", f"--chdir={work}", str(TRAIN_SBATCH), *overrides],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + slurm.logs_tail()
    job = int(proc.stdout.strip().split(";")[0])
    log = work / "logs" / f"nvlm-train-{job}.out"  # --output=logs/%x-%j.out

    reached = wait_for_iteration(log, 3, timeout=300)  # after the periodic save at iteration 2
    signalled = time.time()
    stop = slurm.run(*[a.format(job=job, urgent=slurm.urgent_partition) for a in command])
    state = slurm.wait_job(job, timeout=420)
    text = log.read_text(errors="replace")
    assert state == final_state, f"job {job} ended {state}:\n{tail(log, 8000)}\n{slurm.logs_tail()}"
    assert slurm.job_state(job)[2] == restarts, f"expected {restarts} requeue(s):\n{text[-6000:]}"
    left = slurm.job_processes(job)
    assert not left, f"processes of job {job} left: {left}"

    # The ranks saved at (or after) the iteration the signal found them at, and published it.
    stopped = [int(m) for m in re.findall(r"preemption signal received: saving at iteration (\d+)", text)]
    assert len(stopped) == 1 and stopped[0] >= reached, (reached, text[-6000:])
    assert "BrokenPipeError" not in text and "Traceback" not in text, text[-6000:]
    assert "torchrun exited with status 0 after SIG" in text
    assert tmp_checkpoints(run_dir) == [], text[-4000:]
    assert not list(work.glob(".nvlm-train-*")), "the stop marker was left behind"
    finished = _clock(text, "training step finished with status 0")
    assert finished is not None, text[-6000:]
    step_exit_s = (finished - (signalled % 86400)) % 86400
    print(f"{how}: signal at iteration {reached}, saved iteration {stopped[0]}, job step ended "
          f"{step_exit_s:.0f} s after the signal, job {state} with {restarts} requeue(s)")
    assert step_exit_s < 30, f"ranks took {step_exit_s:.0f} s to stop (SLURM's KillWait is 30 s)"

    if restarts:
        resumed = [line for line in text.splitlines() if line.startswith("resumed from")]
        assert resumed == [f"resumed from {run_dir}/checkpoints/iter_{stopped[0]:07d} at iteration {stopped[0]}"]
        assert f"job {job} (restart 1): 1 node(s) x 2 rank(s)" in text
        assert text.count("training step finished with status 0") == 2
        assert latest_checkpoint(run_dir) == ITERS
        assert_contiguous_finite(read_metrics(run_dir), ITERS)
    else:
        assert latest_checkpoint(run_dir) == stopped[0]
        assert_contiguous_finite(read_metrics(run_dir), stopped[0])
    if how == "scancel_batch_usr1":
        assert "SIGUSR1 (time limit near)" in text and f"requeueing job {job}" in text
    if how == "preemption":
        assert slurm.wait_job(int(stop.stdout.strip().split(";")[0]), timeout=120) == "COMPLETED"
    if how in ("scontrol_requeue", "preemption", "scancel"):
        assert "SIGTERM: SLURM is ending the job" in text and f"requeueing job {job}" not in text
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["parallel"]["tp"] == 2 and config["train"]["iters"] == ITERS


def test_hydra_submitit_sweep_on_slurm(slurm, tmp_path, demo_cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "nvlm_train.cli.train", "-m",
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
