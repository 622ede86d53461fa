"""Process placement from torchrun's and SLURM's environments."""

from __future__ import annotations

from nvlm_train.runtime.launch_env import expand_slurm_nodelist, read_launch_env


def test_torchrun_environment():
    env = read_launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                           "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == (
        3, 8, 1, "node7", 1234, "torchrun")


def test_srun_without_torchrun_uses_first_node_and_job_port():
    env = read_launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                           "SLURM_JOB_NODELIST": "gpu[003-004,010],login1", "SLURM_JOB_ID": "4242"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 16, 1, "slurm")
    assert env.master_addr == "gpu003"
    assert env.master_port == 20000 + 4242
    # torchrun's variables win when both are present (srun + torchrun launches).
    both = read_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "RANK": "1", "WORLD_SIZE": "4"})
    assert (both.rank, both.world_size, both.source) == (1, 4, "torchrun")


def test_single_process_default():
    env = read_launch_env({})
    assert (env.rank, env.world_size, env.source) == (0, 1, "single")


def test_expand_slurm_nodelist():
    assert expand_slurm_nodelist("a[1-3]") == ["a1", "a2", "a3"]
    assert expand_slurm_nodelist("gpu[08-10,12],cpu1") == ["gpu08", "gpu09", "gpu10", "gpu12", "cpu1"]
    assert expand_slurm_nodelist("localhost") == ["localhost"]
