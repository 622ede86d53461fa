"""Where this process sits in the job: read from torchrun's or SLURM's environment.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. A plain ``srun`` (no torchrun)
sets only SLURM_* variables, so the rendezvous address is derived from the job's node list.
A process started by hand is a world of one.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "single"

    @classmethod
    def local(cls, rank: int = 0, world_size: int = 1, port: int | None = None) -> LaunchEnv:
        """A rank of a job started on this machine by us (spawned ranks, one-process tools)."""
        return cls(rank, world_size, rank, "127.0.0.1", port or free_port(), "single")


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous on this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed node list, e.g. ``gpu[01-03,07],login1`` -> 4+1 hostnames."""
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            if "-" in item:
                lo, hi = item.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{item}{suffix}")
    return hosts


def _port_from_job(job_id: str | None) -> int:
    # Deterministic per job so every task agrees without communicating; avoids clashes
    # between jobs sharing a node.
    return 20000 + (int(job_id) % 20000 if job_id and job_id.isdigit() else 9)


def read_launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=env.get("MASTER_ADDR") or expand_slurm_nodelist(nodelist)[0],
            master_port=int(env.get("MASTER_PORT") or _port_from_job(env.get("SLURM_JOB_ID"))),
            source="slurm",
        )
    return LaunchEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", "0") or 0), "single")
